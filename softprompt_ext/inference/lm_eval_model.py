"""lm-evaluation-harness model `softprompt`: evaluate several prompt adapters in one run against `softprompt serve`.

lm-eval's `local-completions` evaluates one `model` (here: one adapter) per run. `softprompt` is the same client
with a task -> adapter table, so one run evaluates each task with its own soft prompt on one frozen base
(Lester et al. 2021, section 6: a task is only its prompt):

    python -m softprompt_ext.inference.lm_eval_model run --model softprompt --include_path ./my_tasks \\
        --tasks sst2_task,rte_task \\
        --model_args base_url=http://127.0.0.1:8000/v1/completions,adapters=sst2_task:sst2+rte_task:rte

`adapters` maps task names to served adapter names (`task:adapter`, joined with `+`); `adapter=NAME` is the
adapter of every task not listed. Without `base_url`, `serve=DIR` serves the adapters of folder `DIR` on
`pretrained` (a base model directory or Hub id; default the embedded T5) in this process (`build_app` under
uvicorn on a free 127.0.0.1 port, the engine in a worker thread, fp32) for the run. Everything else is `local-completions`' (`num_concurrent`, `tokenized_requests`,
`tokenizer_backend`, ...): log-likelihood tasks send token ids with `echo` + `logprobs` and read the prompt's
log-probabilities (decoder-only bases), generation tasks send their `until` strings as `stop`. On an
encoder-decoder (T5) base, which `GET /tokenizer_info` reports and whose prompt tokens have no log-probabilities
(the server refuses `echo`), log-likelihood requests are scored as decoder targets through `POST /v1/classify`
instead (`lm_eval_seq2seq`: log p(continuation tokens | context), `is_greedy` from greedy completions). Each task's requests
go out together (lm-eval's batching and `num_concurrent` apply within a task); the server batches whatever
arrives together, any adapters. Its scores are the server's, which `tests/test_serving_clients.py` (decoder-only)
and `tests/test_lm_eval_t5.py` (T5) compare sample by sample with lm-eval's `hf` backend loading the same adapter
(`peft=`).

lm-eval finds a model class only once its module is imported: run lm-eval through this module
(`python -m softprompt_ext.inference.lm_eval_model run ARGS`: lm-eval's own command line), or import it before
`lm_eval.simple_evaluate(model="softprompt", ...)`. Needs `pip install lm-eval`.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.openai_completions import LocalCompletionsAPI

from .lm_eval_seq2seq import seq2seq_loglikelihood


def parse_adapters(spec: str) -> dict[str, str]:
    """`"task:adapter+task:adapter"` -> `{task: adapter}`; a malformed entry raises naming it."""
    table: dict[str, str] = {}
    for entry in filter(None, spec.split("+")):
        task, sep, adapter = entry.partition(":")
        if not sep or not task or not adapter:
            raise ValueError(f"adapters entry {entry!r} is not TASK:ADAPTER; write adapters=task1:adapter1+task2:adapter2.")
        table[task] = adapter
    return table


@register_model("softprompt")
class SoftPromptCompletions(LocalCompletionsAPI):
    """`local-completions` with one served adapter per task.

    Args:
        adapters: `"task:adapter+..."`, the adapter of each task.
        serve, pretrained: without `base_url`: serve the adapters of folder `serve` on base `pretrained` here.
        adapter: the adapter of tasks not in `adapters` (default: `model`, as `local-completions`).
        **kwargs: `local-completions`' arguments (`base_url`, `num_concurrent`, `tokenized_requests`, ...).
    """

    def __init__(self, adapters: str = "", adapter: str | None = None, serve: str | None = None,
                 pretrained: str | None = None, **kwargs: Any):
        self.task_adapters = parse_adapters(adapters)
        if kwargs.get("base_url") is None:
            if serve is None:
                raise ValueError("softprompt needs base_url=http://HOST:PORT/v1/completions (a running softprompt "
                                 "serve) or serve=ADAPTER_FOLDER (serve them in this process).")
            kwargs["base_url"] = serve_in_thread(pretrained, serve) + "/v1/completions"
        kwargs.setdefault("model", adapter or next(iter(self.task_adapters.values()), None))
        if kwargs["model"] is None:
            raise ValueError("softprompt needs adapters=task:adapter+... or adapter=NAME (the served adapter names, "
                             "GET /v1/models).")
        super().__init__(**kwargs)
        self._tokenizer_info: dict | None = None
        self.default_adapter: str = kwargs["model"]

    def _per_task(self, requests: list, run) -> list:
        """`run(requests)` once per task, with `self.model` set to its adapter; answers in request order."""
        answers: list = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            adapter: str = self.task_adapters.get(request.task_name, self.default_adapter)
            groups.setdefault(adapter, []).append(i)
        try:
            for adapter, index in groups.items():
                self.model = adapter
                for i, answer in zip(index, run([requests[i] for i in index]), strict=True):
                    answers[i] = answer
        finally:
            self.model = self.default_adapter
        return answers

    def loglikelihood(self, requests, **kwargs):
        if self._base_info().get("is_encoder_decoder"):
            return self._per_task(requests, self._seq2seq_loglikelihood)
        return self._per_task(requests, lambda group: super(SoftPromptCompletions, self).loglikelihood(group, **kwargs))

    def _server_root(self) -> str:
        """The server's root URL: `base_url` without its `/v1/...` endpoint path."""
        return self.base_url.split("/v1/", 1)[0].rstrip("/")

    def _base_info(self) -> dict:
        """`GET /tokenizer_info` of the server, once (`is_encoder_decoder`); `{}` where it has none
        (another OpenAI-style server: treated as decoder-only)."""
        if self._tokenizer_info is None:
            import requests

            answer = requests.get(self._server_root() + "/tokenizer_info", headers=self.header, timeout=self.timeout)
            self._tokenizer_info = answer.json() if answer.ok else {}
        return self._tokenizer_info

    def _post(self, path: str, body: dict) -> Any:
        """`POST path` on the server; an HTTP error raises with the server's message."""
        import requests

        answer = requests.post(self._server_root() + path, json=body, headers=self.header, timeout=self.timeout)
        if not answer.ok:
            raise RuntimeError(f"POST {path} answered {answer.status_code}: {answer.text[:2000]}")
        return answer.json()

    def _seq2seq_loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        """Encoder-decoder base: continuations scored as decoder targets (`lm_eval_seq2seq`)."""
        answers = seq2seq_loglikelihood([r.args for r in requests], self.model, self._post)
        for request, answer in zip(requests, answers, strict=True):
            self.cache_hook.add_partial("loglikelihood", request.args, answer)
        return answers

    def generate_until(self, requests, **kwargs):
        return self._per_task(requests,
                              lambda group: super(SoftPromptCompletions, self).generate_until(group, **kwargs))

    def loglikelihood_rolling(self, requests, **kwargs):
        return self._per_task(requests,
                              lambda group: super(SoftPromptCompletions, self).loglikelihood_rolling(group, **kwargs))


def serve_in_thread(base: str | None, folder: str, timeout_s: float = 300.0) -> str:
    """Serve `folder`'s adapters on `base` in a daemon thread of this process (fp32, 127.0.0.1, a free port);
    returns the server's URL once it answers."""
    import socket
    import threading
    import time

    import uvicorn

    from .serving import build_app

    app = build_app(base, [folder], precision="fp32", engine_process=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, name="softprompt-lm-eval-server", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the in-process server did not start within {timeout_s:g} s.")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def main() -> None:
    """lm-eval's command line with the `softprompt` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()


__all__ = ["SoftPromptCompletions", "main", "parse_adapters", "serve_in_thread"]
