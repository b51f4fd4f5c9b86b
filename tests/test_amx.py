"""On CPUs with AMX, llama.cpp's repacked weights crash the process on the first multi-token
decode (llama.cpp #20824), so model_load turns extra buffer types off there by default. The
decode runs in a subprocess: a crash must fail this test, not end the test session."""

from __future__ import annotations

from conftest import run_python

from jupyter_localllm import hardware


def test_default_load_decodes_multi_token_batches():
    done = run_python(
        """
        import jupyter_localllm as ll
        from jupyter_localllm import hardware
        model = ll.model_load("default")
        print("amx", hardware.cpu_has_amx(), "extra_bufts", model.use_extra_bufts)
        ctx = ll.context_create(model)
        prompt = ll.apply_chat_template(model, "Name three colours of the rainbow.")
        one = ll.generate(ctx, prompt, max_tokens=8)
        print("generate", one.n_prompt_tokens, one.n_tokens)
        pctx = ll.context_create(model, n_seq_max=4)
        prompts = [ll.apply_chat_template(model, f"Count to {n}.") for n in (2, 3, 4, 5)]
        rows = ll.generate_parallel(pctx, prompts, max_tokens=8, progress=False)
        print("parallel", len(rows), sum(r.ok for r in rows), min(r.n_tokens for r in rows))
        print("done")
        """,
        timeout=180,
    )
    assert done.returncode == 0, f"the process died ({done.returncode}): {done.stderr[-2000:]}"
    lines = {k: v for k, _, v in (line.partition(" ") for line in done.stdout.splitlines())}
    assert "done" in lines
    amx = hardware.cpu_has_amx()
    assert lines["amx"] == f"{amx} extra_bufts {not amx}"
    n_prompt, n_tokens = map(int, lines["generate"].split())
    assert n_prompt > 8 and n_tokens >= 1
    n_rows, n_ok, fewest = map(int, lines["parallel"].split())
    assert (n_rows, n_ok) == (4, 4) and fewest >= 1


def test_extra_bufts_off_on_amx(model):
    if hardware.cpu_has_amx():
        assert model.use_extra_bufts is False
    else:
        assert model.use_extra_bufts is True
