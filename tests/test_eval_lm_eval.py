"""The lm-eval adapter: its three request types, and lm-eval's own LAMBADA task agreeing with ours."""

import json
import math

import pytest
import torch
from eval_doubles import LOG_OTHER, LOG_SUCCESSOR, BigramLM, byte_tokenizer, chars

from gpt2kit.evals import EvalOptions, evaluate
from gpt2kit.model import GPT, GPTConfig

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from gpt2kit.evals.lm_eval_adapter import GPT2KitLM  # noqa: E402


def instance(kind, args, idx=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


def test_adapter_requests_by_hand():
    model = BigramLM(chars({"x": " ", " ": "b", "b": "c", "c": "\n", "<eot>": "x"}), n_positions=8)
    lm = GPT2KitLM(model=model, tokenizer=byte_tokenizer(), batch_size=2)
    results = lm.loglikelihood(
        [
            instance("loglikelihood", ("xx", " bc")),
            instance("loglikelihood", ("xx", " bd")),
            instance("loglikelihood", ("", "x")),
        ]
    )
    assert results[0] == (pytest.approx(3 * LOG_SUCCESSOR), True)
    assert results[1] == (pytest.approx(2 * LOG_SUCCESSOR + LOG_OTHER), False)
    assert results[2] == (pytest.approx(LOG_SUCCESSOR), True)  # empty context: conditioned on <|endoftext|>
    # 11 tokens after <eot>, in windows of 8, each predicted once: eot>x, x>' ', ' '>b, b>c, c>\n and again
    # x>' ', ' '>b, b>c follow the successors (8); x>x twice and \n>x do not (3).
    (total,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", ("xx bc\nxx bc",))])
    assert total == pytest.approx(8 * LOG_SUCCESSOR + 3 * LOG_OTHER)
    texts = lm.generate_until([instance("generate_until", ("xx", {"until": ["\n"], "max_gen_toks": 5}))])
    assert texts == [" bc"]


def random_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=257, n_positions=64, n_layer=2, n_head=2, n_embd=32)).eval()


WORDS = ["the cat sat", "a dog ran far away", "it was late", "she said yes", "he went home now"]
RANDOM_GPT_TEXTS = [f"{w} and then {w}" for w in WORDS * 4]
# Under this bigram model the last word of "xx bc" is greedy, of the others not: acc_last_word 1/3.
BIGRAM_TEXTS = ["xx bc", "xx bd", "xx dc"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_model, texts",
    [(random_gpt, RANDOM_GPT_TEXTS), (lambda: BigramLM(chars({"x": " ", " ": "b", "b": "c", "d": "c"})), BIGRAM_TEXTS)],
)
def test_lm_eval_lambada_task_matches_our_last_word_accuracy_and_perplexity(tmp_path, make_model, texts):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model, tokenizer = make_model(), byte_tokenizer()
    data = tmp_path / "lambada_test.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    # lm-eval's lambada_openai, pointed at the local file.
    (tmp_path / "lambada_local.yaml").write_text(
        f"""task: lambada_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
    )
    output = simple_evaluate(
        model=GPT2KitLM(model=model, tokenizer=tokenizer, batch_size=4),
        tasks=["lambada_local"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        bootstrap_iters=0,
    )
    theirs = output["results"]["lambada_local"]
    ours = evaluate(model, tokenizer, ["lambada"], {"lambada": data}, options=EvalOptions(batch_size=3))["lambada"]
    assert theirs["acc,none"] == ours["metrics"]["acc_last_word"]
    assert theirs["perplexity,none"] == pytest.approx(ours["metrics"]["ppl"], rel=1e-6)
    assert not math.isnan(theirs["perplexity,none"])
    if texts is BIGRAM_TEXTS:
        assert theirs["acc,none"] == pytest.approx(1 / 3)
