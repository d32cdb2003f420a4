"""fusedrnn.apps IMDB sentiment: loader, text pipeline, every CLI action and checkpoints,
on tiny aclImdb fixtures (folder and .tar.gz) made in tmp_path."""

import contextlib
import io
import json
import random
import sys
import tarfile

import pytest
import torch

for _package in ("tokenizers", "tqdm", "matplotlib"):
    pytest.importorskip(_package)

from fusedrnn.apps import common, imdb, sentiment, text  # noqa: E402
from fusedrnn.cli import main  # noqa: E402

POSITIVE = "great wonderful superb loved brilliant".split()
NEGATIVE = "awful terrible boring hated dreadful".split()
NEUTRAL = "the film plot actor scene story movie was and a".split()
PER_CLASS = 12
TINY = ["--embedding-dim", "8", "--hidden-size", "8", "--max-len", "24", "--vocab-size", "60",
        "--batch-size", "8", "--val-fraction", "0.25", "--lr", "0.02", "--no-progress"]


def review(rng, words):
    body = [rng.choice(NEUTRAL + words) for _ in range(rng.randint(5, 40))]
    return " ".join(body[:3]) + ". <br /><br />" + " ".join(body[3:]) + " " + words[0] + "!"


def write_tree(root):
    """An aclImdb folder under ``root``: README, imdb.vocab, train and test, no unsup."""
    rng = random.Random(0)
    base = root / "aclImdb"
    for split in ("train", "test"):
        for polarity, words, ratings in (("pos", POSITIVE, (7, 10)), ("neg", NEGATIVE, (1, 4))):
            folder = base / split / polarity
            folder.mkdir(parents=True)
            for index in range(PER_CLASS):
                rating = rng.randint(*ratings)
                (folder / f"{index}_{rating}.txt").write_text(review(rng, words))
    (base / "README").write_text("tiny fixture\n")
    (base / "imdb.vocab").write_text("\n".join(POSITIVE + NEGATIVE + NEUTRAL) + "\n")
    (base / "test" / "pos" / "only_in_test_unique.txt").write_text("unique")  # not a review name
    return base


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb_folder")
    write_tree(root)
    return root


@pytest.fixture(scope="module")
def archive(folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("imdb_archive") / "aclImdb_v1.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder / "aclImdb", arcname="aclImdb")
    return path


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(archive, tmp_path_factory):
    """``fusedrnn sentiment train`` for 3 epochs on the archive: (output folder, stdout)."""
    out = tmp_path_factory.mktemp("run")
    status, stdout, _ = run_cli(["sentiment", "train", "--data", archive, "--out", out,
                                 "--epochs", "3", *TINY])
    assert status == 0
    return out, stdout


# ---------------------------------------------------------------- loader


def test_loader_reads_archive_and_folder_alike(folder, archive):
    from_archive = imdb.load(archive)
    for path in (folder, folder / "aclImdb"):
        from_folder = imdb.load(path)
        for split in ("train", "test"):
            assert from_folder[split] == from_archive[split]
    train = from_archive["train"]
    assert len(train) == 2 * PER_CLASS and sum(train.labels) == PER_CLASS
    assert train.labels == sorted(train.labels)
    assert train.ids[0] == "neg/0_" + train.ids[0].split("_")[1]
    first_positive = train.labels.index(1)
    assert POSITIVE[0] in train.texts[first_positive] and "<br />" in train.texts[0]
    assert imdb.load(archive, splits=("test",)).keys() == {"test"}


def test_loader_errors(tmp_path, monkeypatch, archive):
    with pytest.raises(imdb.DataNotFoundError, match="given by --data"):
        imdb.load(tmp_path / "missing.tar.gz")
    monkeypatch.setenv(imdb.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(imdb.DataNotFoundError, match=f"given by {imdb.ENV_VAR}"):
        imdb.locate()
    monkeypatch.setenv(imdb.ENV_VAR, str(archive))
    assert imdb.locate() == archive
    empty = tmp_path / "empty"
    (empty / "aclImdb" / "train" / "pos").mkdir(parents=True)
    with pytest.raises(imdb.DataNotFoundError, match="no train reviews"):
        imdb.load(empty, splits=("train",))
    (tmp_path / "bad.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(imdb.DataNotFoundError, match="cannot read"):
        imdb.load(tmp_path / "bad.tar.gz")
    with pytest.raises(ValueError, match="unknown split"):
        imdb.load(archive, splits=("unsup",))


@pytest.mark.parametrize("compression", ["gz", "xz"])
@pytest.mark.parametrize("at", [0.2, 0.5, 0.8, 0.95, 0.99])
def test_a_damaged_archive_is_refused_not_read_in_part(folder, archive, tmp_path, at,
                                                       compression):
    # tarfile ends an archive at its first unreadable header: damage past the first member
    # gave part of the reviews, without an error.
    if compression == "xz":
        pytest.importorskip("lzma")
        archive = tmp_path / "aclImdb_v1.tar.xz"
        with tarfile.open(archive, "w:xz") as tar:
            tar.add(folder / "aclImdb", arcname="aclImdb")
    damaged = bytearray(archive.read_bytes())
    start = int(len(damaged) * at)
    damaged[start:start + 16] = bytes(16)
    (tmp_path / "damaged.tar.gz").write_bytes(bytes(damaged))
    with pytest.raises(imdb.DataNotFoundError, match="cannot read the IMDB archive"):
        imdb.load(tmp_path / "damaged.tar.gz")


def test_loader_offline_download_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv(imdb.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(imdb, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(imdb, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(imdb, "OFFICIAL_URL", "http://127.0.0.1:9/aclImdb_v1.tar.gz")
    with pytest.raises(imdb.DataNotFoundError) as raised:
        imdb.locate()
    message = str(raised.value)
    assert "downloading http://127.0.0.1:9" in message and "--data" in message
    assert imdb.ENV_VAR in message and not (tmp_path / "cache" / "aclImdb_v1.tar.gz").exists()


def test_split_validation_is_balanced_disjoint_and_seeded(archive):
    reviews = imdb.load(archive, splits=("train",))["train"]
    train, validation = imdb.split_validation(reviews, 0.25, seed=3)
    assert len(validation) == 6 and sum(validation.labels) == 3
    assert sorted(train.ids + validation.ids) == sorted(reviews.ids)
    assert imdb.split_validation(reviews, 0.25, seed=3)[1] == validation
    assert imdb.split_validation(reviews, 0.25, seed=4)[1].ids != validation.ids


# ---------------------------------------------------------------- text pipeline


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_tokenizer_cleans_html_and_caps_vocabulary(kind):
    texts = ["A great film.<br /><br />Loved it", "An awful film<br/>hated it"] * 3
    tokenizer = text.train_tokenizer(texts, kind, vocab_size=40, min_frequency=1)
    assert tokenizer.get_vocab_size() <= 40
    assert tokenizer.token_to_id(text.PAD) == 0 and tokenizer.token_to_id(text.UNK) == 1
    tokens = tokenizer.encode("GREAT film<br />loved").tokens
    assert not any("br" in token or "<" in token for token in tokens)
    if kind == "word":
        assert tokens == ["great", "film", "loved"]
        assert tokenizer.encode("zebra").ids == [1]  # unseen in training: [UNK]


def test_truncation_strategies():
    ids = list(range(10))
    assert text.truncate(ids, 4, "head") == [0, 1, 2, 3]
    assert text.truncate(ids, 4, "tail") == [6, 7, 8, 9]
    assert text.truncate(ids, 8, "head+tail") == [0, 1, 4, 5, 6, 7, 8, 9]
    assert text.truncate(ids, 20, "head") == ids
    with pytest.raises(ValueError, match="truncation"):
        text.truncate(ids, 4, "middle")


def test_encoder_round_trip_and_empty_text():
    tokenizer = text.train_tokenizer(["good movie", "bad movie"] * 2, min_frequency=1)
    encoder = text.TextEncoder(tokenizer, max_len=2, truncation="tail")
    assert encoder.encode(["good bad movie", ""]) == [
        [tokenizer.token_to_id("bad"), tokenizer.token_to_id("movie")], [1]]
    again = text.TextEncoder.from_state(encoder.to_state())
    assert again.encode(["good bad movie"]) == encoder.encode(["good bad movie"])
    with pytest.raises(ValueError, match="invalid tokenizer JSON"):
        text.TextEncoder.from_state({**encoder.to_state(), "tokenizer": "{broken"})


def test_bucket_batches_cover_everything_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in range(1000)]
    batches = text.bucket_batches(lengths, 10, shuffle=True, seed=1, pool_batches=20)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread / len(batches) < 50  # random batches of 10 would spread ~400
    assert batches == text.bucket_batches(lengths, 10, shuffle=True, seed=1, pool_batches=20)
    assert batches != text.bucket_batches(lengths, 10, shuffle=True, seed=2, pool_batches=20)
    ordered = text.bucket_batches(lengths, 10, shuffle=False)
    assert [lengths[i] for b in ordered for i in b] == sorted(lengths, reverse=True)


def test_pad_batch():
    tokens, lengths = text.pad_batch([[5, 6, 7], [8]])
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]


# ---------------------------------------------------------------- command line


def test_train_writes_checkpoints_and_learns(trained):
    out, stdout = trained
    record = json.loads((out / "history.json").read_text())
    history = record["history"]
    assert record["config"]["max_len"] == 24 and record["environment"]["git_commit"]
    assert record["environment"]["device"] == "cpu" and record["environment"]["torch"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert "best validation accuracy" in stdout and (out / "best.pt").is_file()
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and "optimizer" in last and last["kind"] == sentiment.KIND
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["best_val_accuracy"] == max(row["val_accuracy"] for row in history)
    assert best["config"]["max_len"] == 24 and "optimizer" not in best


def test_resume_matches_an_uninterrupted_run(archive, tmp_path, trained):
    out = tmp_path / "resumed"
    assert run_cli(["sentiment", "train", "--data", archive, "--out", out, "--epochs", "2",
                    *TINY])[0] == 0
    # As if a run of 3 epochs had stopped after 2: --resume alone goes on to its own 3.
    last = torch.load(out / "last.pt", weights_only=True)
    last["config"]["epochs"] = 3
    torch.save(last, out / "last.pt")
    assert sentiment.resumed_config(out / "last.pt", 7).epochs == 7
    status, _, err = run_cli(["sentiment", "train", "--data", archive, "--out", out,
                              "--resume", "--no-progress"])
    assert status == 0 and "resuming" in err
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["sentiment", "train", "--out", str(out), "--resume", "--cell", "gru"])
    assert raised.value.code == 2 and "only --epochs may be given, not --cell" in err.getvalue()
    resumed = torch.load(out / "last.pt", weights_only=True)
    straight = torch.load(trained[0] / "last.pt", weights_only=True)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, msg=name)


def test_evaluate(trained, archive, tmp_path):
    metrics_file = tmp_path / "metrics.json"
    status, stdout, _ = run_cli(["sentiment", "evaluate", "--checkpoint",
                                 trained[0] / "best.pt", "--data", archive, "--json",
                                 metrics_file])
    assert status == 0 and "accuracy:" in stdout and "confusion matrix" in stdout
    metrics = json.loads(metrics_file.read_text())
    assert metrics["split"] == "test" and metrics["environment"]["fusedrnn"]
    (tn, fp), (fn, tp) = metrics["confusion"]
    assert tn + fp == fn + tp == PER_CLASS and metrics["count"] == 2 * PER_CLASS
    assert metrics["accuracy"] == pytest.approx((tn + tp) / (2 * PER_CLASS))


def test_evaluate_and_predict_run_a_checkpoint_on_any_backend(trained, archive, tmp_path):
    # A model trained on a GPU backend (its checkpoint says cuda) runs on the CPU under auto,
    # the default; a backend asked for that cannot run here is a usage error.
    payload = torch.load(trained[0] / "best.pt", weights_only=True)
    gpu_trained = tmp_path / "gpu.pt"
    torch.save({**payload, "config": {**payload["config"], "backend": "cuda"}}, gpu_trained)
    status, stdout, _ = run_cli(["sentiment", "evaluate", "--checkpoint", gpu_trained,
                                 "--data", archive])
    assert status == 0 and "accuracy:" in stdout
    status, stdout, _ = run_cli(["sentiment", "predict", "--checkpoint", gpu_trained, "good"])
    assert status == 0 and json.loads(stdout)["text"] == "good"
    if torch.cuda.is_available():
        return
    for action, extra in (("evaluate", ["--data", str(archive)]), ("predict", ["good"])):
        with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()) as err:
            main(["sentiment", action, "--checkpoint", str(gpu_trained), "--backend", "cuda",
                  *extra])
        assert raised.value.code == 2 and "--backend cuda" in err.getvalue(), action


def test_evaluate_refuses_an_empty_json_path(trained, archive):
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["sentiment", "evaluate", "--checkpoint", str(trained[0] / "best.pt"), "--data",
              str(archive), "--json", ""])
    assert raised.value.code == 2 and "--json: an empty path" in err.getvalue()


@pytest.mark.parametrize("argv, package", [
    (["sentiment", "train"], "tokenizers"), (["sentiment", "compare"], "matplotlib"),
    (["sentiment", "train"], "tqdm"), (["forecast"], "statsmodels"), (["seq2seq"], "matplotlib")])
def test_a_missing_optional_package_is_named_before_any_work(monkeypatch, tmp_path, argv,
                                                             package):
    real = common.importlib.util.find_spec
    monkeypatch.setattr(common.importlib.util, "find_spec",
                        lambda name, *rest: None if name == package else real(name, *rest))
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()) as err:
        main([*argv, "--out", str(tmp_path / "out")])
    assert raised.value.code == 2
    assert f"needs {package}" in err.getvalue() and f"pip install {package}" in err.getvalue()
    assert not (tmp_path / "out").exists()


def test_no_progress_needs_no_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises
    bar = common.progress(range(3), 3, "steps", enabled=False)
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss="1.0", refresh=False)
    bar.close()
    with pytest.raises(ImportError):
        common.progress(range(3), 3, "steps")


def test_predict(trained, tmp_path):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("a superb film\n\nawful, boring\n")
    status, stdout, _ = run_cli(["sentiment", "predict", "--checkpoint", trained[0] / "best.pt",
                                 "great great", "--input", inputs])
    assert status == 0
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [row["text"] for row in rows] == ["great great", "a superb film", "awful, boring"]
    for row in rows:
        assert row["label"] == ("positive" if row["positive_probability"] > 0.5 else "negative")
        assert 0 <= row["positive_probability"] <= 1
    for argv, message in (([], "give texts"), (["--input", tmp_path / "none.txt"], "cannot read")):
        with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
            main(["sentiment", "predict", "--checkpoint", str(trained[0] / "best.pt"),
                  *map(str, argv)])
        assert message in err.getvalue()


def test_checkpoint_round_trip_and_bad_files(trained, tmp_path):
    path = trained[0] / "best.pt"
    model, encoder, payload = sentiment.load_model(path)
    ids = encoder.encode(["great film", "terrible plot"])
    first = sentiment.predict_probabilities(model, ids, "cpu")
    again = sentiment.predict_probabilities(sentiment.load_model(path)[0], ids, "cpu")
    torch.testing.assert_close(first, again)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(common.CheckpointError, match="corrupt"):
        sentiment.load_model(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(common.CheckpointError, match="not a fusedrnn-sentiment checkpoint"):
        sentiment.load_model(foreign)
    mismatched = tmp_path / "mismatched.pt"
    torch.save({**payload, "config": {**payload["config"], "hidden_size": 9}}, mismatched)
    with pytest.raises(common.CheckpointError, match="does not match"):
        sentiment.load_model(mismatched)
    with pytest.raises(SystemExit) as raised, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["sentiment", "predict", "--checkpoint", str(corrupt), "text"])
    assert raised.value.code == 2 and "corrupt" in err.getvalue()


def test_compare(archive, tmp_path):
    status, stdout, _ = run_cli(["sentiment", "compare", "--data", archive, "--out", tmp_path,
                                 "--epochs", "1", *TINY])
    assert status == 0
    table = (tmp_path / "compare.md").read_text()
    for name in ("| lstm |", "| lstm+attention |", "| gru |", "| gru+attention |"):
        assert name in table and name in stdout
    assert (tmp_path / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "gru-attention" / "best.pt").is_file()
