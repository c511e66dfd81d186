"""Past one machine: webtext build, prepare and overlap build as tasks on local processes, a stand-in Slurm that runs
the job scripts datatrove writes, and (slow) a local Ray cluster; each must give what the local executor gives."""

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zstandard

from gpt2kit.cli import main
from gpt2kit.data.bloom import BloomFilter, build_filter
from gpt2kit.data.bloom_tasks import HashCorpus, build_sharded_filter
from gpt2kit.data.loader import TokenWindows
from gpt2kit.data.overlap import check_overlap
from gpt2kit.data.prepare import prepare
from gpt2kit.data.shards import load_manifest, open_tokens
from gpt2kit.errors import GPT2KitError
from gpt2kit.executors import ExecutorConfig
from gpt2kit.webtext import build_webtext
from tests import slurm_standin
from tests.conftest import shared_file
from tests.test_webtext import fast_config, read_shards, stage_table, url_list
from tests.webtext_site import standard_site


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four slices of Gutenberg books and a zstd JSON-lines file of short documents."""
    root = tmp_path_factory.mktemp("scale") / "corpus"
    root.mkdir()
    books = sorted(shared_file("train/gutenberg").glob("*.txt"))[:4]
    for book in books:
        (root / book.name).write_bytes(book.read_bytes()[:120_000])
    lines = "".join(
        json.dumps({"text": f"Document {i}: " + "a few words here. " * (i % 7 + 1)}) + "\n" for i in range(60)
    )
    (root / "short.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    return root


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Stand-in sbatch, squeue, sacct, scancel, scontrol and srun first on PATH."""
    slurm_standin.install(tmp_path / "slurm-bin")
    (tmp_path / "slurm-state").mkdir()
    monkeypatch.setenv("PATH", f"{tmp_path / 'slurm-bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path / "slurm-state"))
    return ExecutorConfig(kind="slurm", partition="debug", poll_seconds=0.2)


def token_counts(out: Path) -> Counter:
    """The multiset of tokens of every shard, train and validation together."""
    manifest = load_manifest(out)
    manifest.verify(out)
    counts: Counter = Counter()
    for split in ("train", "val"):
        for path in manifest.shard_paths(out, split):
            values, freq = np.unique(np.asarray(open_tokens(path)), return_counts=True)
            counts.update(dict(zip(values.tolist(), freq.tolist(), strict=True)))
    return counts


def shard_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))}


def overlap_table(filter_path: Path, tests: list[Path]) -> list[dict]:
    return [row.summary() | {"flags": row.flags} for row in check_overlap(filter_path, tests)]


def test_prepare_tasks_shards_do_not_depend_on_the_task_count(corpus, tmp_path, gpt2_tokenizer):
    streamed = prepare([str(corpus)], gpt2_tokenizer, tmp_path / "stream", workers=1, progress=False)
    one = prepare([str(corpus)], gpt2_tokenizer, tmp_path / "one", tasks=1, workers=1, val_fraction=0.2)
    three = prepare([str(corpus)], gpt2_tokenizer, tmp_path / "three", tasks=3, workers=2, val_fraction=0.2)
    assert shard_files(tmp_path / "one") == shard_files(tmp_path / "three")
    assert [s.file for s in one.manifest.shards] == [s.file for s in three.manifest.shards]
    assert one.manifest.settings == three.manifest.settings and one.manifest.settings["layout"] == "per-file"
    # the same tokens as one process streaming the corpus; only which documents are held out differs
    assert token_counts(tmp_path / "three") == token_counts(tmp_path / "stream")
    docs = lambda m: m.split_stats("train").num_docs + m.split_stats("val").num_docs
    assert docs(three.manifest) == docs(streamed.manifest) == three.manifest.input_stats["documents"]
    assert three.manifest.split_stats("val").num_docs > 0
    windows = TokenWindows(tmp_path / "three", "train", context=64)  # training reads the per-file layout
    assert len(windows) > 100 and windows.batch([0, len(windows) - 1])[0].shape == (2, 64)


def test_prepare_tasks_resume_redoes_only_what_was_lost(corpus, tmp_path, gpt2_tokenizer):
    out = tmp_path / "data"
    first = prepare([str(corpus)], gpt2_tokenizer, out, tasks=2, workers=1)
    before = shard_files(out)
    lost = first.manifest.shards[0].file
    (out / lost).unlink()  # a shard lost, and the task that wrote it must run again
    shutil.rmtree(out / ".tasks" / "logs")
    again = prepare([str(corpus)], gpt2_tokenizer, out, tasks=2, workers=1)
    assert shard_files(out) == before
    assert again.groups_reused == len(first.manifest.groups) - 1 and again.groups_written == 1
    with pytest.raises(GPT2KitError, match="seed=0, now 1"):
        prepare([str(corpus)], gpt2_tokenizer, out, tasks=2, workers=1, seed=1)
    with pytest.raises(GPT2KitError, match="without tasks"):
        prepare([], gpt2_tokenizer, tmp_path / "hf", tasks=2, hf_dataset="some/dataset")


def test_sharded_filter_answers_as_one_filter(corpus, tmp_path):
    tests = [corpus / "short.jsonl.zst", shared_file("wikitext-2/wiki.valid.tokens")]
    book = sorted(corpus.glob("*.txt"))[0]
    tests.append(tmp_path / "part-of-a-book.txt")
    tests[-1].write_text(book.read_text()[50_000:60_000] + "\nand a line that is in no book at all, not one of them\n")
    plain = build_filter([corpus], tmp_path / "plain.bloom", workers=1)
    one = build_sharded_filter([corpus], tmp_path / "one.bloom", shards=1, tasks=2)
    four = build_sharded_filter([corpus], tmp_path / "four.bloom", shards=4, tasks=3)
    # one shard is the plain build's filter, bit for bit
    assert np.array_equal(BloomFilter.open(plain.path).bits, BloomFilter.open(one.path).bits)
    assert one.ngrams == four.ngrams == plain.ngrams and four.documents == plain.documents
    assert sum(p.n for p in four.shards) == four.ngrams and len(four.shards) == 4
    table = overlap_table(plain.path, tests)
    assert overlap_table(one.path, tests) == overlap_table(four.path, tests) == table
    assert 0 < table[2]["ngrams_found"] < table[2]["ngrams"] and table[0]["percent_ngrams_found"] == 100.0
    assert not (tmp_path / "four.bloom.work").exists()
    # fewer shards over an earlier build: its extra shard files go
    build_sharded_filter([corpus], tmp_path / "four.bloom", shards=2)
    assert sorted(p.name for p in tmp_path.glob("four.bloom.shard-*")) == [
        "four.bloom.shard-00000-of-00002",
        "four.bloom.shard-00001-of-00002",
    ]
    (tmp_path / "four.bloom.shard-00001-of-00002").unlink()
    with pytest.raises(GPT2KitError, match="shard 1 of the filter four.bloom is missing"):
        BloomFilter.open(tmp_path / "four.bloom")


def test_a_task_that_dies_is_run_again_and_the_output_is_unchanged(corpus, tmp_path, monkeypatch):
    reference = build_sharded_filter([corpus], tmp_path / "ref.bloom", shards=3, tasks=2)
    marker = tmp_path / "died-once"
    real = HashCorpus._append

    def dies_once(self, fingerprints, paths):
        real(self, fingerprints, paths)  # half a bucket written, then the process dies
        if paths[0].name == ".000001.u64.tmp" and not marker.exists():  # file 1: task 1's
            marker.touch()
            raise MemoryError("injected")

    monkeypatch.setattr(HashCorpus, "_append", dies_once)  # the local executor forks: its tasks see this
    retried = build_sharded_filter([corpus], tmp_path / "retried.bloom", shards=3, tasks=2)
    assert marker.exists()
    for a, b in zip(BloomFilter.open(reference.path).shards, BloomFilter.open(retried.path).shards, strict=True):
        assert np.array_equal(a.bits, b.bits)

    marker.unlink()
    once = ExecutorConfig(retries=0, workers=1)  # one process runs the tasks in order: task 0 completes, 1 dies
    failed_once = r"stage hash: 1 of 2 tasks failed 1 time \(task 1\).*run the same command again"
    with pytest.raises(GPT2KitError, match=failed_once):
        build_sharded_filter([corpus], tmp_path / "once.bloom", shards=3, tasks=2, executor=once)
    resumed = build_sharded_filter([corpus], tmp_path / "once.bloom", shards=3, tasks=2)  # resumes
    for a, b in zip(BloomFilter.open(reference.path).shards, BloomFilter.open(resumed.path).shards, strict=True):
        assert np.array_equal(a.bits, b.bits)


@pytest.mark.slow  # end to end: run by `make test-slow`, which CI runs too
def test_slurm_runs_the_job_scripts_and_matches_local(corpus, tmp_path, slurm, gpt2_tokenizer):
    site, _ = standard_site()
    site.start()
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join(url_list(site.base)) + "\n")
        local = build_webtext(fast_config("urls", [urls], tmp_path / "web-local", workers=2))
        on_slurm = build_webtext(fast_config("urls", [urls], tmp_path / "web-slurm", workers=2), slurm)
    finally:
        site.stop()
    assert stage_table(tmp_path / "web-slurm") == stage_table(tmp_path / "web-local")
    assert on_slurm.documents == local.documents == 10
    texts = lambda out: sorted((r["url"], r["text"]) for r in read_shards(out))
    assert texts(tmp_path / "web-slurm") == texts(tmp_path / "web-local")
    # datatrove's own job scripts ran: array jobs chained with afterok, each task under srun
    script = (tmp_path / "web-slurm.work" / "logs" / "pages" / "launch_script.slurm").read_text()
    assert "#SBATCH --array=0-1" in script and "srun" in script and "launch_pickled_pipeline" in script
    assert "#SBATCH --mem-per-cpu=2048M" in script and "#SBATCH --partition=debug" in script
    jobs = slurm_standin.all_jobs()
    assert all(job["state"] == "COMPLETED" for job in jobs)
    assert any(kind == "afterok" for job in jobs for kind, _ in job["deps"])

    prepare([str(corpus)], gpt2_tokenizer, tmp_path / "tok-local", tasks=2, workers=1)
    prepare([str(corpus)], gpt2_tokenizer, tmp_path / "tok-slurm", executor=slurm, tasks=2)
    assert shard_files(tmp_path / "tok-slurm") == shard_files(tmp_path / "tok-local")

    build_sharded_filter([corpus], tmp_path / "local.bloom", shards=2, tasks=2)
    build_sharded_filter([corpus], tmp_path / "slurm.bloom", shards=2, tasks=2, executor=slurm)
    tests = [corpus / "short.jsonl.zst"]
    assert overlap_table(tmp_path / "slurm.bloom", tests) == overlap_table(tmp_path / "local.bloom", tests)


@pytest.mark.slow  # end to end: run by `make test-slow`, which CI runs too
def test_slurm_failed_task_cancels_its_dependents_and_is_resubmitted(corpus, tmp_path, slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_FAIL_ONCE", "hash:1")  # array task 1 of the hash job: its node dies once
    reference = build_sharded_filter([corpus], tmp_path / "ref.bloom", shards=2, tasks=2)
    retried = build_sharded_filter([corpus], tmp_path / "f.bloom", shards=2, tasks=2, executor=slurm)
    states = [(job["name"], job["state"]) for job in slurm_standin.all_jobs()]
    assert ("gpt2kit-hash", "FAILED") in states and ("gpt2kit-filter", "CANCELLED") in states
    # the resubmitted chain: the hash job (its failed task only) and the filter job, both completed
    assert states[-2:] == [("gpt2kit-hash", "COMPLETED"), ("gpt2kit-filter", "COMPLETED")]
    assert slurm_standin.all_jobs()[-2]["array"] == [0]
    for a, b in zip(BloomFilter.open(reference.path).shards, BloomFilter.open(retried.path).shards, strict=True):
        assert np.array_equal(a.bits, b.bits)


def test_cli_executor_errors_are_one_line(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    out = str(tmp_path / "f.bloom")
    assert main(["overlap", "build", "--corpus", str(corpus), "--out", out, "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "needs `sbatch` on PATH" in err and err.count("\n") == 1
    assert main(["overlap", "build", "--corpus", str(corpus), "--out", out, "--shards", "2", "--sbatch", "x"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["overlap", "build", "--corpus", str(corpus), "--out", out, "--shards", "0"]) == 2
    assert "shards must be at least 1" in capsys.readouterr().err
    assert main(["prepare", "--input", str(corpus), "--out", str(tmp_path / "d"), "--tasks", "0"]) == 2
    assert "tasks must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_cluster_runs_all_three_jobs_as_local_does(corpus, tmp_path, gpt2_tokenizer):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = ExecutorConfig(kind="ray")
        site, _ = standard_site()
        site.start()
        try:
            urls = tmp_path / "urls.txt"
            urls.write_text("\n".join(url_list(site.base)) + "\n")
            build_webtext(fast_config("urls", [urls], tmp_path / "web-local", workers=2))
            build_webtext(fast_config("urls", [urls], tmp_path / "web-ray", workers=2), on_ray)
        finally:
            site.stop()
        assert stage_table(tmp_path / "web-ray") == stage_table(tmp_path / "web-local")
        texts = lambda out: sorted((r["url"], r["text"]) for r in read_shards(out))
        assert texts(tmp_path / "web-ray") == texts(tmp_path / "web-local")

        prepare([str(corpus)], gpt2_tokenizer, tmp_path / "tok-stream", workers=1, progress=False)
        prepare([str(corpus)], gpt2_tokenizer, tmp_path / "tok-ray", executor=on_ray, tasks=3)
        assert token_counts(tmp_path / "tok-ray") == token_counts(tmp_path / "tok-stream")

        build_filter([corpus], tmp_path / "local.bloom", workers=1)
        build_sharded_filter([corpus], tmp_path / "ray.bloom", shards=4, tasks=2, executor=on_ray)
        tests = [corpus / "short.jsonl.zst", sorted(corpus.glob("*.txt"))[1]]
        assert overlap_table(tmp_path / "ray.bloom", tests) == overlap_table(tmp_path / "local.bloom", tests)
    finally:
        ray.shutdown()


@pytest.mark.slow  # end to end: run by `make test-slow`, which CI runs too
def test_slurm_refuses_to_submit_beside_an_earlier_runs_queued_jobs(corpus, tmp_path, slurm, gpt2_tokenizer):
    script = tmp_path / "busy.sh"
    script.write_text("#!/bin/bash\n#SBATCH --job-name=gpt2kit-tokenize\nsleep 2\n")
    submitted = slurm_standin.main(["sbatch", str(script)])
    assert submitted == 0
    busy = slurm_standin.all_jobs()[-1]["id"]
    jobs_file = tmp_path / "data" / ".tasks" / "logs" / "slurm-jobs.json"
    jobs_file.parent.mkdir(parents=True)
    jobs_file.write_text(json.dumps([busy]))
    with pytest.raises(GPT2KitError, match=f"Slurm jobs {busy} of an earlier run are still queued.*scancel {busy}"):
        prepare([str(corpus)], gpt2_tokenizer, tmp_path / "data", executor=slurm, tasks=2)
    while any(job["state"] not in slurm_standin.TERMINAL for job in slurm_standin.all_jobs()):
        time.sleep(0.2)
    prepare([str(corpus)], gpt2_tokenizer, tmp_path / "data", executor=slurm, tasks=2)  # once they end, it runs
    assert json.loads(jobs_file.read_text()) and load_manifest(tmp_path / "data").complete
