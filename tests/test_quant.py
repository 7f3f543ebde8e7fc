"""Quantized weights (issue #11): quantizers, kernels against the NumPy definitions,
model parity against the independent reference with fake-quantized weights, the
converted file (cache, validation, atomic writes) and bad input."""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import reference
import voxnp
from voxnp import cpu, kernels, ops, quant, quant_file
from voxnp.dump import dump_arrays
from voxnp.errors import VoxnpError
from voxnp.weights import TOK_EMBEDDINGS, _decoder_layer_names, _encoder_layer_names

FORMATS = [quant.INT8, quant.Q4K_FORMAT]
IMPLS = cpu.available()          # every kernel set this CPU runs
rng = np.random.default_rng(11)


def heavy_tailed(shape):
    """Student-t weights (3 degrees of freedom): a few large values in most groups."""
    return rng.standard_t(3, size=shape).astype(np.float32) * 0.02


def steps(m: quant.QuantizedMatrix) -> np.ndarray:
    """The quantization step of each weight [n, k]: scale (int8), d * sc (q4k)."""
    n, k = m.shape
    f = m.format
    if f is quant.INT8:
        return np.repeat(m.arrays["scale"].astype(np.float64), f.block, axis=1)[:, :k]
    meta = m.arrays["meta"]
    step = meta["d"][:, :, None].astype(np.float64) * meta["sc"]                     # [n, nsb, 8]
    return np.repeat(step.reshape(n, -1), f.sub, axis=1)[:, :k]


def run_kernel(m, x, impl, threads=1):
    y = np.full((x.shape[0], m.shape[0]), np.nan, np.float32)
    with cpu.using(impl):
        m.format.kernel(m, np.ascontiguousarray(x), y, threads)
    return y


# ---------------------------------------------------------------------------
# quantizers


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("shape", [(1, 1), (7, 160), (37, 300), (16, 3072)])
def test_quantizer_error_is_at_most_half_a_step(fmt, shape):
    w = heavy_tailed(shape)
    m = quant.quantize(w, fmt)
    err = np.abs(w.astype(np.float64) - quant.dequantize(m))
    assert np.all(err <= steps(m) / 2 * (1 + 1e-5) + 1e-30)
    rel = np.linalg.norm(quant.dequantize(m) - w) / np.linalg.norm(w)
    assert rel < (0.02 if fmt is quant.INT8 else 0.13)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_zero_and_tiny_groups(fmt):
    w = rng.standard_normal((4, 600)).astype(np.float32)
    w[0] = 0                                         # a whole row of zero groups
    w[1, :256] = 0                                   # one zero group/super-block
    w[2] = rng.standard_normal(600) * 1e-38          # BF16 normals near the bottom
    w[3, :300] = np.float32(9.2e-41) * rng.integers(-3, 4, 300)   # BF16 denormals
    m = quant.quantize(w, fmt)
    dq = quant.dequantize(m)
    assert np.all(np.isfinite(dq))
    assert np.all(dq[0] == 0) and np.all(dq[1, :256] == 0)
    assert np.all(np.abs(w - dq.astype(np.float64)) <= steps(m) / 2 * (1 + 1e-5) + 1e-44)
    x = rng.standard_normal((2, 600)).astype(np.float32)
    for impl in IMPLS:
        y = run_kernel(m, x, impl)
        assert np.all(np.isfinite(y)) and np.all(y[:, 0] == 0)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_weights_are_refused_naming_the_tensor(fmt, bad):
    w = rng.standard_normal((3, 40)).astype(np.float32)
    w[1, 7] = bad
    with pytest.raises(VoxnpError, match="layers.4.wq"):
        quant.quantize(w, fmt, name="layers.4.wq")


def test_activation_quantization():
    x = np.array([[0.5, -1.0, 0.25, 0.0] + [0.0] * 124, [np.nan] + [1.0] * 127,
                  [1e-31] * 128, [np.inf] + [0.0] * 127], np.float32)
    xq, xs = quant.quantize_activations(x, 128)
    assert xq[0, :3].tolist() == [16384, -32767, 8192] and xs[0, 0] == np.float32(1 / 32767)
    assert np.isnan(xs[1, 0]) and np.isnan(xs[3, 0]) and np.all(xq[1] == 0)
    assert xs[2, 0] == 0 and np.all(xq[2] == 0)
    xq8, xs8 = quant.quantize_activations(x, 128, quant.ACT_LEVELS_Q4K)      # q4k's: int8
    assert xq8.dtype == np.int8 and xq8[0, :3].tolist() == [64, -127, 32] and xs8[0, 0] == np.float32(1 / 127)
    assert np.isnan(xs8[1, 0]) and xs8[2, 0] == 0 and np.all(xq8[2] == 0)


# ---------------------------------------------------------------------------
# kernels against the NumPy definitions


def term_magnitude(x, m):
    """The scale of a float rounding error in y [T, n]: sum_j |x_j| |W_rj| for int8; for q4k
    the two terms the kernel sums in float32, sum_j |x_j| (|d sc q| + dmin mn), whose
    cancellation can leave y much smaller than either."""
    if m.format is quant.INT8:
        return np.abs(x).astype(np.float64) @ np.abs(quant.dequantize(m)).T.astype(np.float64)
    n, k = m.shape
    meta = m.arrays["meta"]
    step = np.repeat((meta["d"][:, :, None].astype(np.float64) * meta["sc"]).reshape(n, -1), 32, axis=1)
    offset = np.repeat((meta["dmin"][:, :, None].astype(np.float64) * meta["mn"]).reshape(n, -1), 32, axis=1)
    q = m.format._unpack(m.arrays["qs"]).reshape(n, -1)
    terms = (np.abs(step * q) + offset)[:, :k]
    return np.abs(x).astype(np.float64) @ terms.T


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n,k", [(1, 5), (7, 160), (37, 300), (130, 1031), (64, 3072)])
def test_kernel_matches_reference(fmt, impl, n, k):
    m = quant.quantize(heavy_tailed((n, k)), fmt)
    x = rng.standard_normal((8, k)).astype(np.float32)
    x[:, :3] *= 40                                            # outlier activation channels
    ref = quant.reference_linear(x, m)
    for T in range(1, 9):
        y = run_kernel(m, x[:T], impl, threads=2)
        assert np.all(np.abs(y - ref[:T]) <= 1e-6 * term_magnitude(x[:T], m) + 1e-30)


def exact_int8_case(n, k, blocks):
    """Weights and activations whose scales are powers of two and whose sums stay below
    2^24: every float operation is exact, so any integer error would show."""
    q = rng.integers(-3, 4, (n, blocks * 128)).astype(np.int8)
    q[:, ::128] = 127 * rng.choice([-1, 1], (n, blocks))      # each group's max: scale = 2^-7
    w = (q[:, :k].astype(np.float32) * np.float32(2 ** -7))
    xq = rng.integers(-3, 4, (8, blocks * 128)).astype(np.float32)
    xq[:, 1::128] = 32767                                      # each block's max: xs = 2^-10
    return w, (xq[:, :k] * np.float32(2 ** -10))


@pytest.mark.parametrize("impl", IMPLS)
def test_int8_integer_sums_are_exact(impl):
    w, x = exact_int8_case(33, 1000, 8)
    m = quant.quantize(w, quant.INT8)
    assert np.all(m.arrays["scale"] == np.float32(2 ** -7))
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_array_equal(quant.reference_linear(x, m), exact.astype(np.float32))
    np.testing.assert_array_equal(run_kernel(m, x, impl), exact.astype(np.float32))


@pytest.mark.parametrize("impl", IMPLS)
def test_q4k_integer_sums_are_exact(impl):
    n, nsb = 21, 4
    k = nsb * 256
    meta = np.zeros((n, nsb), quant.Q4K_META)
    meta["d"], meta["dmin"] = np.float32(2 ** -8), np.float32(2 ** -9)
    meta["sc"] = rng.integers(1, 3, (n, nsb, 8))
    meta["mn"] = rng.integers(0, 4, (n, nsb, 8))
    q = rng.integers(0, 16, (n, nsb, 4, 2, 32)).astype(np.uint8)
    q[..., 1] = 1                                             # where the activations peak
    m = quant.QuantizedMatrix(quant.Q4K_FORMAT, (n, k),
                              {"qs": (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).reshape(n, -1), "meta": meta})
    xq = rng.integers(-3, 4, (8, k)).astype(np.float32)
    xq[:, 1::256] = 127                                         # q4k's activations: int8
    x = xq * np.float32(2 ** -10)
    exact = (x.astype(np.float64) @ quant.dequantize(m).T.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(quant.reference_linear(x, m), exact)
    np.testing.assert_array_equal(run_kernel(m, x, impl), exact)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("impl", IMPLS)
def test_each_row_is_bit_identical_to_a_one_row_call(fmt, impl):
    m = quant.quantize(heavy_tailed((300, 1100)), fmt)             # > the one-thread threshold
    x = rng.standard_normal((8, 1100)).astype(np.float32)
    singles = np.concatenate([run_kernel(m, x[t:t + 1], impl, threads=1) for t in range(8)])
    for T in range(1, 9):
        for threads in (1, 2):
            np.testing.assert_array_equal(run_kernel(m, x[:T], impl, threads), singles[:T])
    # batching rows of different streams: any subset in any order gives the same rows
    order = [5, 0, 7]
    np.testing.assert_array_equal(run_kernel(m, x[order], impl, 2), singles[order])


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_every_kernel_set_gives_the_same_bits(fmt):
    """The integer sums are exact and the float order is one contract (8 lanes), so a
    converted file gives the same results on any CPU (portable twin included)."""
    m = quant.quantize(heavy_tailed((70, 1300)), fmt)
    x = rng.standard_normal((8, 1300)).astype(np.float32)
    x[2, 256:512] = np.nan                                    # NaN blocks stay NaN everywhere
    want = run_kernel(m, x, "portable", threads=2)
    assert np.isnan(want[2]).all() and np.isfinite(want[[0, 1, 3]]).all()
    for impl in IMPLS:
        np.testing.assert_array_equal(run_kernel(m, x, impl, threads=2), want, err_msg=impl)


def activation_rounding(x, m):
    """Bound on what rounding the activations changes in x @ W.T: sum_j |W_rj| xs_j / 2."""
    levels = quant.ACT_LEVELS_Q4K if m.format is quant.Q4K_FORMAT else quant.ACT_LEVELS
    _, xs = quant.quantize_activations(x, m.format.block, levels)
    half_step = np.repeat(xs.astype(np.float64) / 2, m.format.block, axis=1)[:, :x.shape[1]]
    return half_step @ np.abs(quant.dequantize(m)).T.astype(np.float64)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_kernels_linear_dispatch_and_many_rows(fmt):
    m = quant.quantize(heavy_tailed((quant.SCRATCH_FLOATS // 999 + 17, 999)), fmt)   # several blocks
    dq = quant.dequantize(m)
    for rows in (1, 8, 9, 40):
        x = rng.standard_normal((rows, 999)).astype(np.float32)
        y = kernels.linear(x, m)
        np.testing.assert_allclose(y, ops.linear(x, m), rtol=0, atol=1e-4 * np.abs(y).max())
        # up to FEW_ROWS rows the activations are rounded (by at most half their step);
        # more rows multiply the float activations by BLAS
        slack = activation_rounding(x, m) if rows <= quant.FEW_ROWS else 0
        assert np.all(np.abs(y - x @ dq.T) <= slack + 1e-4 * np.abs(y).max())
    x3 = rng.standard_normal((2, 3, 999)).astype(np.float32)          # leading axes kept
    assert kernels.linear(x3, m).shape == (2, 3, m.shape[0])


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_dequantize_kernel_matches_numpy(fmt):
    m = quant.quantize(heavy_tailed((23, 777)), fmt)
    out = np.full((10, 777), np.nan, np.float32)
    m.format.kernel_dequantize(m, 5, 15, out)
    want = quant.dequantize(m)[5:15]              # (q4k: q * step - offset may be one FMA in C)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_kernels_reject_wrong_shapes():
    m = quant.quantize(heavy_tailed((4, 300)), quant.INT8)
    with pytest.raises(ValueError):
        run_kernel(m, np.zeros((1, 100), np.float32), "portable")
    with pytest.raises(ValueError):
        run_kernel(m, np.zeros((9, 300), np.float32), "portable")


# ---------------------------------------------------------------------------
# model parity: tiny checkpoints against the reference with fake-quantized weights


def fake_quantized_reference(model_dir, fmt, monkeypatch):
    """tests/reference.py's model with every planned matrix replaced by dequant(quant(W)),
    and the activations rounded where the kernels round them (x -> xs * xq): in the
    encoder layers (int8 dot products) each row to int8 with its own scale; before a q4k
    matrix, up to FEW_ROWS rows to int8 per block of 256 (int8 matrices take int16
    activations, whose rounding is below the test's tolerance); the decoder's keys and
    values stored in BF16."""
    ref = reference.load_model_dir(model_dir)
    ref["kv_bf16"] = True
    params = ref["params"]
    cfg = voxnp.load(model_dir).config
    plan = quant.PLANS[fmt]
    q4k_matrices = set()
    for i in range(params["n_layers"]):
        names = _decoder_layer_names(i, cfg.decoder)
        for field, f in plan.items():
            if field != "lm_head":
                name = names[field][0]
                ref["_f32"][name] = quant.dequantize(quant.quantize(reference.weight(ref, name), f))
                if f is quant.Q4K_FORMAT:
                    q4k_matrices.add(id(ref["_f32"][name]))
    encoder_matrices = set()
    for i in range(cfg.encoder.n_layers):
        names = _encoder_layer_names(i, cfg.encoder)
        for field, f in quant.ENCODER_PLAN.items():
            name = names[field][0]
            ref["_f32"][name] = quant.dequantize(quant.quantize(reference.weight(ref, name), f))
            encoder_matrices.add(id(ref["_f32"][name]))
    head = quant.dequantize(quant.quantize(reference.weight(ref, TOK_EMBEDDINGS), plan["lm_head"]))
    monkeypatch.setattr(reference, "lm_head", lambda model: head)   # the embedding table stays exact
    linear = reference.linear

    def rounded_linear(x, w, b=None):
        rows = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
        if id(w) in encoder_matrices:
            xq, xs = quant.INT8_ROWS.quantize_activations(rows)
            x = (xq.astype(np.float32) * xs[:, None]).reshape(x.shape)
        elif id(w) in q4k_matrices and rows.shape[0] <= quant.FEW_ROWS:
            xq, xs = quant.quantize_activations(rows, quant.Q4K_FORMAT.block, quant.ACT_LEVELS_Q4K)
            blocks = xq.reshape(len(rows), -1, quant.Q4K_FORMAT.block).astype(np.float32) * xs[:, :, None]
            x = blocks.reshape(len(rows), -1)[:, :rows.shape[1]].reshape(x.shape)
        return linear(x, w, b)

    monkeypatch.setattr(reference, "linear", rounded_linear)
    return ref


@pytest.mark.parametrize("fmt", ["int8", "q4"])
@pytest.mark.parametrize("which", ["tiny", "window"])
def test_model_parity_with_fake_quantized_reference(fmt, which, request, speech, monkeypatch):
    model_dir = request.getfixturevalue(f"{which}_dir")
    ref = fake_quantized_reference(model_dir, fmt, monkeypatch)
    teacher = np.random.default_rng(5).integers(1000, 4096, 40)
    want = reference.forward(ref, speech, teacher=teacher)
    bf16 = dump_arrays(voxnp.load(model_dir), speech, teacher=teacher)
    for backend in ("numba", "numpy"):
        got = dump_arrays(voxnp.load(model_dir, weights=fmt, backend=backend), speech, teacher=teacher)
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        err = np.abs(got["logits"] - want["logits"]).max() / np.abs(want["logits"]).max()
        # q4k rounds its activations to int8: where the engine's float order and the
        # reference's differ by an ulp, an activation can round the other way, one step
        # of 1/127 of its block's largest (measured up to 2.0e-3; int8: 3e-5)
        assert err < (2e-3 if fmt == "int8" else 5e-3), f"{backend}: logits off by {err:.1e} of the largest"
    # and the quantization did change the model (the test would see a dropped dispatch)
    assert np.abs(bf16["logits"] - want["logits"]).max() > 10 * np.abs(got["logits"] - want["logits"]).max()


def test_quantized_model_replaces_only_the_planned_matrices(tiny_dir):
    bf16 = voxnp.load(tiny_dir)
    m = voxnp.load(tiny_dir, weights="q4")
    layer, ref_layer = m.weights.decoder.layers[0], bf16.weights.decoder.layers[0]
    assert layer.wq.format is quant.Q4K_FORMAT and layer.wo.format is quant.INT8
    assert m.weights.decoder.lm_head.format is quant.INT8
    assert m.weights.decoder.tok_embeddings is not m.weights.decoder.lm_head
    np.testing.assert_array_equal(m.weights.decoder.tok_embeddings, bf16.weights.decoder.tok_embeddings)
    np.testing.assert_array_equal(layer.ada_down, ref_layer.ada_down)
    assert m.weights.encoder.layers[0].wq.format is quant.INT8_ROWS      # the encoder: tests/test_encoder_int8.py
    assert m.weights.encoder.conv2.dtype == np.uint16 and m.weights.adapter.w_out.dtype == np.uint16


def test_quantized_decoders_keep_keys_and_values_in_bf16(tiny_dir, speech):
    """int8 and q4 store the decoder's KV rings as BF16 (half the bytes a step reads at long
    contexts); the bf16 reference keeps float32, and so do the encoder's rings."""
    from voxnp.decoder import new_decoder_state
    from voxnp.encoder import new_encoder_state

    for fmt, want in (("bf16", np.float32), ("int8", np.uint16), ("q4", np.uint16)):
        m = voxnp.load(tiny_dir, weights=fmt)
        state = new_decoder_state(m.config, m.weights.decoder, 6, m.ops)
        assert all(c.k.dtype == want and c.v.dtype == want for c in state.caches), fmt
        assert new_encoder_state(m.config, m.ops).caches[0].k.dtype == np.float32
        s = m.stream()
        s.feed(speech)
        s.finish()
        assert s._dec.caches[0].k.dtype == want and s._dec.caches[0].length > 0, fmt


def test_streaming_on_quantized_weights(tiny_dir, speech):
    m = voxnp.load(tiny_dir, weights="int8")
    whole = dump_arrays(m, speech)["tokens"]
    s = m.stream(interval=0.3)
    for i in range(0, len(speech), 3000):
        s.feed(speech[i:i + 3000])
    s.finish()
    assert [t.id for t in s.tokens][:len(whole)] == list(whole[:len(s.tokens)])


# ---------------------------------------------------------------------------
# the converted file


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("VOXNP_CACHE_DIR", str(d))
    return d / "weights"


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(tiny_dir, d)
    return d


def cached_file(cache: Path, fmt: str) -> Path:
    files = list(cache.glob(f"*.{fmt}.*safetensors"))
    assert len(files) == 1, files
    return files[0]


def test_converted_once_then_mapped(model_copy, cache, capsys):
    m = voxnp.load(model_copy, weights="int8", progress=True)
    assert "quantizing to int8" in capsys.readouterr().err
    path = cached_file(cache, "int8")
    stamp = path.stat().st_mtime_ns
    t = time.perf_counter()
    again = voxnp.load(model_copy, weights="int8", progress=True)
    assert time.perf_counter() - t < 2
    assert capsys.readouterr().err == "" and path.stat().st_mtime_ns == stamp
    assert isinstance(again.weights.decoder.layers[0].wq.arrays["q"].base, np.ndarray)  # a view of the map
    assert m.file.path == path
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]      # no temporary left


@pytest.mark.parametrize("damage", ["truncate", "foreign", "version", "other_model"])
def test_bad_cache_file_is_rebuilt_with_a_notice(model_copy, cache, capsys, damage, window_dir):
    voxnp.load(model_copy, weights="q4", progress=False)
    path = cached_file(cache, "q4")
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[:-100])
    elif damage == "foreign":
        path.write_bytes(b"not a safetensors file at all")
    elif damage == "version":
        path.write_bytes(good.replace(f'"format_version":"{quant.FORMAT_VERSION}"'.encode(), b'"format_version":"0"'))
    else:
        quant_file.quantize_model(window_dir, "q4", out=path, progress=False)
    capsys.readouterr()
    m = voxnp.load(model_copy, weights="q4", progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "rebuilding" in err[0]
    assert path.read_bytes() == good
    assert m.weights.decoder.layers[0].w1.shape == (160, 64)


def test_quantize_beside_the_model(model_copy, cache, capsys):
    out = quant_file.quantize_model(model_copy, "int8", progress=False)
    assert out == model_copy / "consolidated.int8.safetensors"
    m = voxnp.load(model_copy, weights="int8", progress=False)
    assert m.file.path == out and not cache.exists()
    # a copy of the model (same bytes) still matches its file; another model does not
    other = model_copy.parent / "other"
    shutil.copytree(model_copy, other)
    assert voxnp.load(other, weights="int8").file.path == other / "consolidated.int8.safetensors"


def test_file_beside_the_model_from_another_model_is_an_error(model_copy, window_dir, cache):
    quant_file.quantize_model(window_dir, "int8", out=model_copy / "consolidated.int8.safetensors",
                              progress=False)
    with pytest.raises(VoxnpError, match="made from another model") as e:
        voxnp.load(model_copy, weights="int8")
    assert "\n" not in str(e.value)


def test_file_beside_the_model_of_another_version_is_an_error(model_copy, cache):
    out = quant_file.quantize_model(model_copy, "q4", progress=False)
    out.write_bytes(out.read_bytes().replace(f'"format_version":"{quant.FORMAT_VERSION}"'.encode(), b'"format_version":"9"'))
    with pytest.raises(VoxnpError, match="format version 9"):
        voxnp.load(model_copy, weights="q4")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_cache_dir_is_a_one_line_error(model_copy, cache):
    cache.mkdir(parents=True)
    cache.chmod(0o500)
    try:
        with pytest.raises(VoxnpError, match=str(cache)):
            voxnp.load(model_copy, weights="int8")
    finally:
        cache.chmod(0o700)


def test_unwritable_cache_dir_is_a_one_line_error(model_copy, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("VOXNP_CACHE_DIR", str(blocker))          # weights/ cannot be made under a file
    with pytest.raises(VoxnpError, match=f"{blocker}/weights: cannot write") as e:
        voxnp.load(model_copy, weights="int8")
    assert "\n" not in str(e.value)


def test_full_disk_leaves_no_partial_file(model_copy, cache, monkeypatch):
    calls, real_pwrite = [], os.pwrite

    def full(fd, data, offset):                      # the disk fills up after a few writes
        calls.append(offset)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(quant_file.os, "pwrite", full)
    with pytest.raises(VoxnpError, match="No space left on device"):
        voxnp.load(model_copy, weights="int8")
    assert list(cache.iterdir()) == []


def test_no_cache_dir_converts_to_a_temporary_file(model_copy, monkeypatch, tmp_path):
    monkeypatch.setenv("VOXNP_CACHE_DIR", "")
    m = voxnp.load(model_copy, weights="int8")
    assert not m.file.path.exists()                 # unlinked, still mapped
    assert np.isfinite(dump_arrays(m, np.zeros(4000, np.float32))["logits"]).all()


def test_nan_weight_refused_naming_the_tensor(model_copy, cache):
    from voxnp.weights import read_header

    header = read_header(model_copy / "consolidated.safetensors")
    begin, _ = header.entries["layers.1.feed_forward.w3.weight"]["data_offsets"]
    with open(model_copy / "consolidated.safetensors", "r+b") as f:
        f.seek(header.data_start + begin + 2 * 5)
        f.write(np.array([0x7FC0], np.uint16).tobytes())       # a BF16 NaN
    with pytest.raises(VoxnpError, match="decoder.layers.1.w3: NaN or infinite"):
        voxnp.load(model_copy, weights="q4")
    assert not cache.exists() or list(cache.iterdir()) == []


# ---------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("name", ["int4", "BF16", "", None, "fp8"])
def test_unknown_format(tiny_dir, name):
    with pytest.raises(VoxnpError, match="unknown weight format") as e:
        voxnp.load(tiny_dir, weights=name)
    assert "bf16, int8, q4" in str(e.value) and "\n" not in str(e.value)


def test_quantize_to_bf16_or_unknown(tiny_dir, tmp_path):
    with pytest.raises(VoxnpError, match="nothing to quantize"):
        quant_file.quantize_model(tiny_dir, "bf16", out=tmp_path / "x")
    with pytest.raises(VoxnpError, match="unknown weight format"):
        quant_file.quantize_model(tiny_dir, "q3", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cupy_backend_refuses_quantized_weights(tiny_dir):
    with pytest.raises(VoxnpError, match="CPU backends only"):
        voxnp.load(tiny_dir, weights="int8", backend="cupy")


# ---------------------------------------------------------------------------
# speculation and batching stay exact on quantized weights


@pytest.mark.parametrize("fmt", ["int8", "q4"])
def test_speculation_and_batching_exact_on_quantized_weights(fmt, window_dir, speech):
    from voxnp.scheduler import Scheduler
    from voxnp.stream import Stream, transcribe

    model = voxnp.load(window_dir, weights=fmt)
    vocab = model.config.decoder.vocab_size
    base = dump_arrays(model, speech)
    ids = [int(t) for t in base["tokens"]]
    r = np.random.default_rng(3)
    for K, drafter in [(1, None), (3, lambda tokens, k: [ids[len(tokens) + i] if len(tokens) + i < len(ids)
                                                         and r.random() < 0.67 else int(r.integers(vocab))
                                                         for i in range(k)]), (7, None)]:
        got = dump_arrays(model, speech, speculate=K, drafter=drafter)
        for key in base:
            np.testing.assert_array_equal(got[key], base[key], err_msg=f"{fmt} {key} K={K}")
    delays = [80, 480, 960]
    alone = [[t.id for t in transcribe(model, speech, delay_ms=d).tokens] for d in delays]
    streams = [Stream(model, delay_ms=d, interval=np.inf, scheduled=True, speculate=k)
               for d, k in zip(delays, [0, 2, 1])]
    for s in streams:
        s.feed(speech)
        s.finish()
    Scheduler(model).run(streams)
    assert all(alone) and [[t.id for t in s.tokens] for s in streams] == alone
