"""The engine imports and searches without CUDA, Triton or transformers."""

import subprocess
import sys
import textwrap


def test_works_without_triton_and_transformers():
    script = textwrap.dedent(
        """
        import sys
        for name in ("triton", "transformers", "tokenizers", "faiss"):
            sys.modules[name] = None  # any import of them now fails
        import torch, engine
        from engine import synthetic
        idx = engine.Index.from_vectors(synthetic.vectors(300, 16))
        r = idx.search(synthetic.qnets(2, [16, 16, 1]), 3)
        assert r.ids.shape == (2, 3) and (r.ids >= 0).all()
        av = engine.available_backends()
        assert av["torch"] == "ok" and av["triton"] != "ok", av
        # The CUDA backend needs no Triton: it runs wherever there is a device to run on.
        assert (av["cuda"] == "ok") <= torch.cuda.is_available(), av
        try:
            engine.score(synthetic.qnets(1, [16, 16, 1]), synthetic.vectors(3, 16), backend="triton")
        except RuntimeError as e:
            assert "triton" in str(e)
        else:
            raise AssertionError("an explicitly requested unavailable backend must fail")
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
