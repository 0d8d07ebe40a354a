"""The ``sksae`` command line (sksae/_cli.py), run in-process through ``main`` but once."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sksae
from sksae import _cli, metrics
from sksae._cli import main
from sksae._persistence import _safetensors_bytes
from sksae.datasets import make_sparse_superposition

#: A small model that reaches a good score in a few epochs of 32 steps.
SMALL = ["--n-components", "64", "--k", "3", "--batch-size", "64", "--random-state", "0"]


@pytest.fixture(scope="module")
def X():
    return make_sparse_superposition(
        n_samples=2000, n_features=16, n_sources=32, n_active=3, random_state=0
    ).astype(np.float32)


@pytest.fixture(scope="module")
def data(X, tmp_path_factory):
    """The same data as DATA in each format: format name -> path."""
    root = tmp_path_factory.mktemp("data")
    shards = np.array_split(X, 3)
    np.save(root / "acts.npy", X)
    np.savez(root / "shards.npz", *shards)
    (root / "shards").mkdir()
    for i, shard in enumerate(shards):
        np.save(root / "shards" / f"{i:02d}.npy", shard)
    # Written by sksae's own safetensors writer, which test_persistence checks against the
    # safetensors library: no optional dependency, no skipped format.
    (root / "acts.safetensors").write_bytes(_safetensors_bytes({"acts": X}))
    named_shards = {f"shard{i}": shard for i, shard in enumerate(shards)}
    (root / "shards.safetensors").write_bytes(_safetensors_bytes(named_shards))
    return {
        "npy": root / "acts.npy",
        "npz": root / "shards.npz",
        "directory": root / "shards",
        "safetensors": root / "acts.safetensors",
        "safetensors_shards": root / "shards.safetensors",
    }


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory):
    """A model trained by the command line for 3 epochs on the .npy file."""
    directory = tmp_path_factory.mktemp("models") / "sae"
    assert main(["fit", str(data["npy"]), "-o", str(directory), "--max-iter", "3", *SMALL]) == 0
    return directory


@pytest.mark.parametrize(
    "source, n_iter, options",
    [
        ("npy", 2, []),
        ("safetensors", 2, []),
        ("npz", 6, []),  # 2 passes over 3 shards, one partial_fit each
        ("safetensors_shards", 6, []),
        ("directory", 6, ["--progress"]),
    ],
)
def test_fit_each_format(data, X, tmp_path, source, n_iter, options):
    out = tmp_path / "sae"
    argv = ["fit", str(data[source]), "-o", str(out), "--max-iter", "2", *SMALL, *options]
    assert main(argv) == 0
    model = sksae.load(out)
    assert (model.n_components, model.k, model.n_iter_) == (64, 3, n_iter)
    assert model.n_samples_seen_ == 2 * len(X)
    # Shards follow fit's learning-rate schedule over the passes: planned to the sample.
    assert model.partial_fit_samples == (None if n_iter == 2 else 2 * len(X))
    assert model.score(X) > 0.5


def test_every_format_of_the_same_data_trains_the_same_model(data, tmp_path):
    # Each shard read from its own bytes, in order: one array as one array, shards as shards.
    models = {}
    for source in data:
        argv = ["fit", str(data[source]), "-o", str(tmp_path / source), "--max-iter", "2"]
        assert main([*argv, *SMALL]) == 0
        models[source] = sksae.load(tmp_path / source).components_
    for one, other in [("npy", "safetensors"), ("npz", "directory"), ("npz", "safetensors_shards")]:
        np.testing.assert_array_equal(models[one], models[other])


def test_fit_memory_maps_a_npy_file(data, tmp_path, monkeypatch):
    """The estimator gets the memory map itself, which it streams batch by batch."""
    fit, seen = sksae.SparseAutoencoderTransformer.fit, []
    monkeypatch.setattr(
        sksae.SparseAutoencoderTransformer, "fit", lambda self, X: fit(self, seen.append(X) or X)
    )
    assert main(["fit", str(data["npy"]), "-o", str(tmp_path), "--max-iter", "1", *SMALL]) == 0
    assert isinstance(seen[0], np.memmap)


def test_evaluate_streams_and_matches_metrics(model_dir, data, X, capsys, monkeypatch):
    # Chunks of 100 rows: several per shard, and none aligned with the shards.
    monkeypatch.setattr(_cli, "EVALUATE_CHUNK_VALUES", 100 * X.shape[1])
    assert main(["evaluate", str(model_dir), str(data["directory"])]) == 0
    out = capsys.readouterr().out

    model = sksae.load(model_dir)
    codes = model.transform(X)
    density = (codes != 0).mean(axis=0)
    expected = {
        "samples": len(X),
        "FVU": metrics.fvu(X, model.inverse_transform(codes)),
        "L0": metrics.l0(codes),
        "dead fraction": metrics.dead_fraction(codes),
    }
    for name, value in expected.items():
        printed = float(re.search(rf"^{name}\s+(\S+)", out, re.MULTILINE).group(1))
        assert printed == pytest.approx(value, rel=1e-5), name
    assert f"({np.sum(density == 0)} of 64 latents)" in out
    median = float(re.search(r"median (\S+)", out).group(1))
    assert median == pytest.approx(np.median(density[density > 0]), rel=1e-3)

    evaluation = _cli._evaluate(model, _cli._shards(data["directory"]))
    assert evaluation["fvu"] == pytest.approx(expected["FVU"], rel=1e-9)
    assert evaluation["l0"] == expected["L0"]
    assert evaluation["dead_fraction"] == expected["dead fraction"]


def test_resume_continues_the_saved_model(model_dir, data, tmp_path):
    out = tmp_path / "sae"
    shutil.copytree(model_dir, out)
    before = sksae.load(out)
    assert main(["fit", str(data["npy"]), "-o", str(out), "--resume", "--max-iter", "2"]) == 0
    after = sksae.load(out)
    # The saved parameters hold but for those given; the history goes on.
    assert (after.n_components, after.k, after.max_iter) == (64, 3, 2)
    assert after.n_iter_ == before.n_iter_ + 2
    assert after.loss_curve_[: before.n_iter_] == before.loss_curve_
    # --resume warm-starts this run only: the saved model's fit starts afresh.
    assert after.warm_start is False


def test_resume_refuses_a_new_model_shape_in_command_line_terms(model_dir, tmp_path, capsys):
    # Before any data is read (there is none): the estimator's own check came after, and
    # advised a call of fit (warm_start=False), which the command line has no way to make.
    missing = str(tmp_path / "missing.npy")
    argv = ["fit", missing, "-o", str(model_dir), "--resume"]
    assert main([*argv, "--n-components", "32"]) == 2
    assert capsys.readouterr().err == (
        f"sksae: error: --resume trains the model in {model_dir} further, whose "
        "n_components, activation, k and bandwidth cannot change; got n_components=32 "
        "(fitted: 64). Drop those options, or train a new model in another MODEL_DIR.\n"
    )
    # A value no model may have is that error, not a change of shape.
    assert main([*argv, "--k", "0"]) == 2
    assert "'k' parameter of SparseAutoencoderTransformer must be" in capsys.readouterr().err


@pytest.mark.parametrize(
    "source, max_iter, options, saved",
    [
        ("npy", 3, ["--checkpoint-every", "2"], [2, 3]),  # epoch 2, then the end
        ("directory", 3, ["--checkpoint-every", "2"], [6, 9]),  # pass 2, then the end
        ("npz", 2, [], [3, 6, 6]),  # shards: every pass by default
    ],
)
def test_checkpoints_are_loadable(data, tmp_path, monkeypatch, source, max_iter, options, saved):
    out = tmp_path / "sae"
    loaded = []

    def save_and_reload(model, directory):
        sksae.save(model, directory)
        loaded.append(sksae.load(directory).n_iter_)

    monkeypatch.setattr(_cli, "save", save_and_reload)
    argv = ["fit", str(data[source]), "-o", str(out), "--max-iter", str(max_iter), *SMALL]
    assert main([*argv, *options]) == 0
    assert loaded == saved


def _interrupt_pass(monkeypatch, n):
    """Make the ``n``-th training pass (an epoch of fit, a shard of partial_fit) raise
    KeyboardInterrupt, as Ctrl-C would."""
    train_pass, calls = sksae.SparseAutoencoderTransformer._train_pass, []

    def interrupted(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == n:
            raise KeyboardInterrupt
        return train_pass(self, *args, **kwargs)

    monkeypatch.setattr(sksae.SparseAutoencoderTransformer, "_train_pass", interrupted)


def test_fit_on_shards_prints_the_loss_of_each_pass(data, tmp_path, capsys):
    argv = ["fit", str(data["directory"]), "-o", str(tmp_path / "sae"), "--max-iter", "2"]
    assert main([*argv, "--verbose", "1", *SMALL]) == 0
    out = capsys.readouterr().out
    # The pass's loss: the mean of its shards' losses, weighted by their rows.
    model = sksae.load(tmp_path / "sae")
    rows = [len(np.load(path)) for path in sorted(data["directory"].iterdir())]
    passes = [np.average(model.loss_curve_[i : i + 3], weights=rows) for i in (0, 3)]
    assert out.startswith(f"pass 1: loss {passes[0]:.5g}\npass 2: loss {passes[1]:.5g}\n")
    # The last pass's at the end, as fit's last epoch's on one array; not its last shard's.
    assert out.endswith(f"(2 passes over 3 shards, loss {passes[1]:.5g}).\n")


@pytest.mark.parametrize("source", ["npy", "directory"])
def test_ctrl_c_saves_the_last_completed_epoch(data, tmp_path, monkeypatch, capsys, source):
    """Ctrl-C in the third pass (an epoch of fit, a shard of partial_fit)."""
    _interrupt_pass(monkeypatch, 3)
    out = tmp_path / "sae"
    assert main(["fit", str(data[source]), "-o", str(out), "--max-iter", "5", *SMALL]) == 130
    assert sksae.load(out).n_iter_ == 2
    assert "interrupted; saved" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["npy", "directory"])
def test_ctrl_c_before_anything_trained_saves_nothing_and_leaves_no_model_dir(
    data, tmp_path, monkeypatch, capsys, source
):
    _interrupt_pass(monkeypatch, 1)
    out = tmp_path / "sae"
    assert main(["fit", str(data[source]), "-o", str(out), *SMALL]) == 130
    assert "nothing to save" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "options, interrupted_call, calls, n_iter",
    [
        # During the third epoch's checkpoint: the epoch was complete, and the model
        # saved on the way out is that epoch's, not the one before the run.
        (["--max-iter", "5", "--checkpoint-every", "1"], 3, [1, 2, 3, 3], 3),
        # During the final save, which was outside the handler of Ctrl-C: the run ended
        # on a traceback, its model unsaved.
        (["--max-iter", "2"], 1, [2, 2], 2),
    ],
    ids=["checkpoint", "final"],
)
def test_ctrl_c_while_a_model_is_saved_saves_it(
    data, tmp_path, monkeypatch, capsys, options, interrupted_call, calls, n_iter
):
    saved = []

    def interrupted_save(model, directory):
        saved.append(model.n_iter_)
        if len(saved) == interrupted_call:
            raise KeyboardInterrupt
        sksae.save(model, directory)

    monkeypatch.setattr(_cli, "save", interrupted_save)
    out = tmp_path / "sae"
    assert main(["fit", str(data["npy"]), "-o", str(out), *options, *SMALL]) == 130
    assert saved == calls
    assert sksae.load(out).n_iter_ == n_iter
    assert f"(n_iter_={n_iter})" in capsys.readouterr().err


# Interrupted in the fourth epoch of fit, or in the second pass over three shards.
@pytest.mark.parametrize(
    "source, max_iter, interrupted_pass, refusal",
    [
        ("npy", 6, 4, r"max_iter=7 \(it ran with 6\)"),
        ("directory", 3, 5, "finishes with the options it ran with; drop --max-iter"),
    ],
)
def test_an_interrupted_fit_resumed_by_the_command_line_ends_as_an_uninterrupted_one(
    data, tmp_path, monkeypatch, capsys, source, max_iter, interrupted_pass, refusal
):
    argv = ["fit", str(data[source]), "--max-iter", str(max_iter), *SMALL]
    assert main([*argv, "-o", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as patch:
        _interrupt_pass(patch, interrupted_pass)
        assert main([*argv, "-o", str(tmp_path / "resumed")]) == 130
    assert sksae.load(tmp_path / "resumed").n_iter_ == interrupted_pass - 1
    # Other training options would not end as the run resumed: refused, named.
    capsys.readouterr()
    assert main([*argv, "-o", str(tmp_path / "resumed"), "--resume", "--max-iter", "7"]) == 2
    assert re.search(refusal, capsys.readouterr().err)
    assert main([*argv, "-o", str(tmp_path / "resumed"), "--resume"]) == 0
    # The shard run resumes in its second pass: this run made two of the three.
    resumed_run = "2 passes over 3 shards" if source == "directory" else "n_iter_=6"
    assert f"({resumed_run}, loss" in capsys.readouterr().out
    whole, resumed = sksae.load(tmp_path / "whole"), sksae.load(tmp_path / "resumed")
    names = ["components_", "encoder_weights_", "loss_curve_", "n_iter_", "n_samples_seen_"]
    for name in [*names, "_trainer_state"]:
        np.testing.assert_equal(getattr(resumed, name), getattr(whole, name))
    assert resumed.get_params() == whole.get_params()


def test_export_writes_sparsify(model_dir, X, tmp_path):
    out = tmp_path / "sparsify"
    assert main(["export", str(model_dir), "-o", str(out), "--format", "sparsify"]) == 0
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["num_latents"], cfg["k"], cfg["d_in"]) == (64, 3, 16)
    assert (out / "sae.safetensors").is_file()
    exported = sksae.load_external(out, "sparsify")
    np.testing.assert_array_equal(exported.transform(X), sksae.load(model_dir).transform(X))


def _one_entry_safetensors(code, array):
    """A safetensors file of one entry, ``acts``: the bytes of ``array`` under the dtype
    ``code``, which sksae's writer may not know."""
    header = {"acts": {"dtype": code, "shape": list(array.shape), "data_offsets": [0, 0]}}
    header["acts"]["data_offsets"][1] = array.nbytes
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + array.tobytes()


def test_integer_data_trains_alike_from_npy_and_safetensors(X, tmp_path):
    counts = np.round(100 * X).astype(np.int16)
    np.save(tmp_path / "counts.npy", counts)
    (tmp_path / "counts.safetensors").write_bytes(_one_entry_safetensors("I16", counts))
    for name in ["counts.npy", "counts.safetensors"]:
        argv = ["fit", str(tmp_path / name), "-o", str(tmp_path / f"{name}.sae"), "--max-iter", "1"]
        assert main([*argv, *SMALL]) == 0
    npy, safetensors = (
        sksae.load(tmp_path / f"counts.{ext}.sae") for ext in ["npy", "safetensors"]
    )
    np.testing.assert_array_equal(npy.components_, safetensors.components_)


@pytest.fixture
def bad_data(X, tmp_path):
    np.save(tmp_path / "flat.npy", X[:, 0])
    np.save(tmp_path / "narrow.npy", X[:, :8])
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "whole.npz", X)
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:100])
    with zipfile.ZipFile(tmp_path / "mixed.npz", "w") as archive:
        archive.write(tmp_path / "narrow.npy", "acts.npy")
        archive.writestr("notes.txt", "not an array")
    (tmp_path / "uneven").mkdir()
    np.save(tmp_path / "uneven" / "00.npy", X)
    np.save(tmp_path / "uneven" / "01.npy", X[:, :8])
    (tmp_path / "cut_member").mkdir()
    np.save(tmp_path / "cut_member" / "00.npy", X)
    whole = io.BytesIO()
    np.save(whole, X)
    with zipfile.ZipFile(tmp_path / "cut_member" / "01.npz", "w") as archive:
        archive.writestr("x.npy", whole.getvalue()[:-100])
    (tmp_path / "objects").mkdir()
    np.save(tmp_path / "objects" / "00.npy", X)
    np.savez(tmp_path / "objects" / "01.npz", X=np.zeros((64, 16), dtype=object))
    (tmp_path / "holes").mkdir()
    np.save(tmp_path / "holes" / "00.npy", X)
    np.save(tmp_path / "holes" / "01.npy", X[:0])
    whole = _safetensors_bytes({"a": X[:1000], "b": X[1000:]})
    (tmp_path / "cut.safetensors").write_bytes(whole[:-100])
    (tmp_path / "float8.safetensors").write_bytes(_one_entry_safetensors("F8_E4M3", X[:4] > 0))
    np.save(tmp_path / "complex.npy", X.astype(np.complex128))
    (tmp_path / "nan").mkdir()
    np.save(tmp_path / "nan" / "00.npy", X)
    np.save(tmp_path / "nan" / "01.npy", np.where(np.eye(*X.shape, dtype=bool), np.nan, X))
    (tmp_path / "nan_first").mkdir()
    np.save(tmp_path / "nan_first" / "00.npy", np.load(tmp_path / "nan" / "01.npy"))
    np.save(tmp_path / "nan_first" / "01.npy", X)
    np.savez_compressed(tmp_path / "damaged.npz", X)
    damaged = bytearray((tmp_path / "damaged.npz").read_bytes())
    # Within the first deflate block's Huffman tables, so that zlib itself fails: damage
    # further in can decompress and fail the CRC check instead.
    damaged[60:68] = b"\xff" * 8
    (tmp_path / "damaged.npz").write_bytes(damaged)
    return tmp_path


def test_half_precision_of_either_byte_order_trains_a_float32_model(X, tmp_path):
    for dtype in ["<f2", ">f2"]:
        np.save(tmp_path / "acts.npy", X.astype(dtype))
        out = tmp_path / dtype[0].replace("<", "little").replace(">", "big")
        assert main(["fit", str(tmp_path / "acts.npy"), "-o", str(out), "--max-iter", "1"]) == 0
        assert sksae.load(out).components_.dtype == np.float32


def test_k_above_n_components_is_warned_of_once(data, tmp_path):
    argv = ["fit", str(data["npy"]), "-o", str(tmp_path / "sae"), "--max-iter", "1"]
    with pytest.warns(UserWarning, match="k=8 is greater than n_components=4") as record:
        assert main([*argv, "--n-components", "4", "--k", "8"]) == 0
    assert len([w for w in record if "greater than n_components" in str(w.message)]) == 1


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["fit", "{tmp}/missing.npy", "-o", "{tmp}/sae"], "missing.npy does not exist"),
        (["fit", "{tmp}/flat.npy", "-o", "{tmp}/sae"], "shape (2000,)"),
        (["fit", "{npy}", "-o", "{tmp}/sae", "--k", "0"], "'k' parameter"),
        (["fit", "{npy}", "-o", "{tmp}/sae", "--activation", "softmax"], "'activation'"),
        (["fit", "{npy}", "-o", "{tmp}/sae", "--max-iter", "many"], "--max-iter"),
        (["fit", "{npy}", "-o", "{tmp}/sae", "--checkpoint-every", "0.5"], "positive integer"),
        (["fit", "{npy}", "-o", "{model}"], "already holds a model"),
        (["fit", "{directory}", "-o", "{tmp}/sae", "--early-stopping"], "--early-stopping"),
        (["fit", "{tmp}/empty.npy", "-o", "{tmp}/sae"], "empty.npy: No data left in file"),
        (["fit", "{tmp}/truncated.npz", "-o", "{tmp}/sae"], "truncated.npz: File is not a zip"),
        (["fit", "{tmp}/damaged.npz", "-o", "{tmp}/sae"], "damaged.npz[arr_0]: Error -3 while"),
        (["fit", "{tmp}/complex.npy", "-o", "{tmp}/sae"], "complex.npy holds complex128 values"),
        # Found from the headers, before the first shard trains.
        (["fit", "{tmp}/mixed.npz", "-o", "{tmp}/sae"], "mixed.npz[notes.txt] is not a .npy"),
        (["fit", "{tmp}/uneven", "-o", "{tmp}/sae"], "01.npy has 8 features"),
        (["fit", "{tmp}/holes", "-o", "{tmp}/sae"], "01.npy holds no rows"),
        (["fit", "{tmp}/cut_member", "-o", "{tmp}/sae"], "01.npz[x] is truncated: its header"),
        # Pickled objects have no size a header gives: they were called truncated.
        (["fit", "{tmp}/objects", "-o", "{tmp}/sae"], "01.npz[X] holds object values"),
        (["fit", "{tmp}/cut.safetensors", "-o", "{tmp}/sae"], "cut.safetensors[b] ends"),
        (["fit", "{tmp}/float8.safetensors", "-o", "{tmp}/sae"], "holds F8_E4M3 values"),
        (["fit", "{npy}", "-o", "{npy}"], "exists and is not a directory"),
        # A directory that exists and takes no files: refused before any training.
        pytest.param(
            ["fit", "{npy}", "-o", "/proc", "--verbose", "1"],
            "MODEL_DIR /proc is not writable",
            marks=pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux's /proc"),
        ),
        (["evaluate", "{model}", "{tmp}/nan"], "01.npy: Input X contains NaN"),
        (["fit", "{tmp}/nan/01.npy", "-o", "{tmp}/sae"], "01.npy: Input X contains NaN"),
        # A run's first shard fails: nothing trained, nothing to save.
        (["fit", "{tmp}/nan_first", "-o", "{tmp}/sae"], "00.npy: Input X contains NaN"),
        (["fit", "{directory}", "-o", "{directory}"], "is DATA"),
        (["evaluate", "{tmp}", "{npy}"], "config.json"),
        (["evaluate", "{model}", "{tmp}/narrow.npy"], "8 features"),
        (["evaluate", "{model}", "{tmp}/damaged.npz"], "damaged.npz[arr_0]: Error -3 while"),
        (["export", "{model}", "-o", "{tmp}/out", "--format", "onnx"], "format='onnx'"),
        (["train", "{npy}"], "invalid choice: 'train'"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv, problem, bad_data, data, model_dir, capsys):
    paths = {"tmp": bad_data, "model": model_dir, **data}
    assert main([arg.format(**paths) for arg in argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("sksae: error: ") and err.count("\n") == 1
    assert problem in err
    assert not (bad_data / "sae").exists()  # no MODEL_DIR left, not even an empty one


@pytest.mark.parametrize(
    "dtype, file",
    [
        (np.complex128, "01.npy"),
        (object, "01.npz"),
        (np.str_, "01.npy"),
        ([("real", np.float32), ("imag", np.float32)], "01.npy"),
    ],
)
def test_a_shard_of_no_real_numbers_is_refused_before_any_trains(
    X, tmp_path, monkeypatch, capsys, dtype, file
):
    """Found from the headers, as a bad shape is: the shards before it do not train."""
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "00.npy", X)
    bad = X.astype(dtype)
    if file.endswith(".npz"):
        np.savez(tmp_path / "shards" / file, acts=bad)
        file += "[acts]"
    else:
        np.save(tmp_path / "shards" / file, bad)
    trained = []
    monkeypatch.setattr(
        sksae.SparseAutoencoderTransformer, "partial_fit", lambda self, X: trained.append(X)
    )
    assert main(["fit", str(tmp_path / "shards"), "-o", str(tmp_path / "sae"), *SMALL]) == 2
    assert trained == []
    err = capsys.readouterr().err
    assert f"{file} holds {bad.dtype} values" in err and err.count("\n") == 1


def test_a_shard_whose_values_fail_names_it_and_saves_the_shards_before(data, X, tmp_path, capsys):
    """Values are read as each shard's turn comes: a NaN in the second shard of a pass
    is found after the first has trained, which --resume goes on from once it is fixed."""
    shutil.copytree(data["directory"], tmp_path / "shards")
    good = np.load(tmp_path / "shards" / "01.npy")
    np.save(tmp_path / "shards" / "01.npy", np.where(good > 1, np.nan, good))
    argv = ["fit", str(tmp_path / "shards"), "-o", str(tmp_path / "sae"), "--max-iter", "2"]
    assert main([*argv, *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "01.npy: Input X contains NaN" in err
    assert "The model of the shards before it is saved: --resume goes on" in err
    first_shard = len(np.load(tmp_path / "shards" / "00.npy"))
    assert sksae.load(tmp_path / "sae").n_samples_seen_ == first_shard
    np.save(tmp_path / "shards" / "01.npy", good)
    assert main([*argv, "--resume"]) == 0
    assert sksae.load(tmp_path / "sae").n_samples_seen_ == 2 * len(X)


def test_a_run_that_diverges_on_a_later_shard_saves_nothing_to_resume(X, tmp_path, capsys):
    """--resume would run on with the learning rate that diverged, which it keeps: the
    error says to lower it, which a run anew in the same MODEL_DIR then does."""
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "00.npy", X[:64])
    np.save(tmp_path / "shards" / "01.npy", X[64:])
    argv = ["fit", str(tmp_path / "shards"), "-o", str(tmp_path / "sae"), *SMALL]
    assert main([*argv, "--learning-rate", "1000"]) == 2
    err = capsys.readouterr().err
    assert "01.npy: Training diverged" in err and "--resume" not in err
    assert not (tmp_path / "sae").exists()
    assert main([*argv, "--learning-rate", "0.001"]) == 0


def test_model_dir_may_lie_below_data(data, tmp_path):
    """DATA's subdirectories are not read, so MODEL_DIR may be one: ``-o sae`` in DATA."""
    shutil.copytree(data["directory"], tmp_path / "shards")
    argv = ["fit", str(tmp_path / "shards"), "-o", str(tmp_path / "shards" / "runs" / "sae")]
    assert main([*argv, "--max-iter", "1", *SMALL]) == 0
    assert len(_cli._shards(tmp_path / "shards")) == 3
    assert main([*argv, "--resume"]) == 0


def test_resuming_an_early_stopped_fit_says_it_trains_anew(data, tmp_path, capsys):
    argv = ["fit", str(data["npy"]), "-o", str(tmp_path), "--max-iter", "1", *SMALL]
    assert main([*argv, "--early-stopping"]) == 0
    assert "keeps no progress" not in capsys.readouterr().err
    assert main([*argv, "--resume", "--max-iter", "2"]) == 0
    assert "keeps no progress: --resume trains --max-iter (2) more" in capsys.readouterr().err
    assert sksae.load(tmp_path).n_iter_ == 3
    # On shards it cannot train, for the saved parameter, not for an option given.
    assert main(["fit", str(data["directory"]), "-o", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "keeps no progress" not in err
    assert f"the model in {tmp_path} was fitted with early stopping" in err
    assert "Pass --no-early-stopping to train on shards" in err
    argv = ["fit", str(data["directory"]), "-o", str(tmp_path), "--resume"]
    assert main([*argv, "--no-early-stopping", "--max-iter", "1"]) == 0


def test_evaluate_skips_an_empty_shard(model_dir, data, tmp_path, capsys):
    """Only training refuses empty shards: evaluate's sums are those without them."""
    shutil.copytree(data["directory"], tmp_path / "shards")
    np.save(tmp_path / "shards" / "99.npy", np.empty((0, 16), dtype=np.float32))
    assert main(["evaluate", str(model_dir), str(data["directory"])]) == 0
    expected = capsys.readouterr().out
    assert main(["evaluate", str(model_dir), str(tmp_path / "shards")]) == 0
    assert capsys.readouterr().out == expected


def test_evaluate_a_model_fitted_on_a_dataframe_with_pandas_output(
    data, X, tmp_path, capsys, recwarn
):
    """A model fitted in Python on named features, its transform set to pandas: evaluate
    reads plain arrays, and encodes as transform would without pandas."""
    pd = pytest.importorskip("pandas")
    named = pd.DataFrame(X, columns=[f"unit{i}" for i in range(X.shape[1])])
    params = dict(n_components=64, k=3, max_iter=2, random_state=0)
    for name, features in [("plain", X), ("named", named)]:
        model = sksae.SparseAutoencoderTransformer(**params).fit(features)
        sksae.save(model.set_output(transform="pandas"), tmp_path / name)
    assert main(["evaluate", str(tmp_path / "plain"), str(data["npy"])]) == 0
    expected = capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "named"), str(data["npy"])]) == 0
    assert capsys.readouterr().out == expected
    assert not [w for w in recwarn if "feature names" in str(w.message)]


def test_evaluate_constant_data_is_exact(model_dir, tmp_path, capsys):
    """Constant columns have no variance, exactly: FVU inf (as metrics.fvu), not 1e31."""
    np.save(tmp_path / "constant.npy", np.full((3, 16), 0.1))
    assert main(["evaluate", str(model_dir), str(tmp_path / "constant.npy")]) == 0
    assert re.search(r"^FVU\s+inf$", capsys.readouterr().out, re.MULTILINE)


@pytest.mark.parametrize("scale", [1.8e151, 1e-160])
def test_evaluate_huge_or_tiny_data_matches_metrics(X, tmp_path, scale):
    # Squared as they were, these overflowed the variance's sum (an FVU of 0 printed),
    # or underflowed every square (NaN).
    X = scale * X.astype(np.float64)
    model = sksae.SparseAutoencoderTransformer(
        n_components=64, k=3, max_iter=1, normalize_input="mean_norm", random_state=0
    ).fit(X)
    X = np.tile(X, (60, 1))
    np.save(tmp_path / "X.npy", X)
    evaluation = _cli._evaluate(model, _cli._shards(tmp_path / "X.npy"))
    expected = metrics.fvu(X, model.inverse_transform(model.transform(X)))
    assert 0 < evaluation["fvu"] == pytest.approx(expected, rel=1e-9)


def test_running_out_of_memory_is_one_line(data, tmp_path, monkeypatch, capsys):
    def fit(self, X):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(sksae.SparseAutoencoderTransformer, "fit", fit)
    assert main(["fit", str(data["npy"]), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sksae: error: DefaultCPUAllocator") and err.count("\n") == 1


def test_python_m_sksae(data, tmp_path):
    out = tmp_path / "sae"
    command = [sys.executable, "-m", "sksae", "fit", str(data["npy"]), "-o", str(out)]
    result = subprocess.run(
        [*command, "--max-iter", "2", "--checkpoint-every", "1", "--progress", *SMALL],
        cwd=Path(sksae.__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Saved the model" in result.stdout
    assert sksae.load(out).n_iter_ == 2


def test_a_reader_gone_away_ends_the_command_quietly(data, model_dir):
    # `sksae evaluate ... | head -0`: the pipe closes before anything is written, which
    # was reported as the error "[Errno 32] Broken pipe", with status 2.
    command = [sys.executable, "-m", "sksae", "evaluate", str(model_dir), str(data["npy"])]
    process = subprocess.Popen(
        command,
        cwd=Path(sksae.__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # long before the child has loaded torch and the model
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == _cli.EXIT_BROKEN_PIPE == 141
    assert stderr == b""
    # Started with stdout closed (sys.stdout is None), it prints nothing, as print does.
    closed = subprocess.run(
        command,
        cwd=Path(sksae.__file__).parents[1],
        stdout=None,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        timeout=300,
    )
    assert (closed.returncode, closed.stderr) == (0, b"")
