"""The built-in sample data set: 14 core dimensions of generated layers, deterministic per seed.

Shape (per dimension, 200 layers by default): layer ids 1..N; sizes log-uniform in four bands
(3% 64 B-1 KiB, 79% 1-8 KiB, 15% 8-64 KiB, 3% 64-256 KiB; about 2.2 MB per dimension, 31 MB for
all 14); 90% UTF-8 text (generated words, some non-ASCII, starting with the layer's keywords),
10% binary (little-endian float32 vectors); 1-5 keywords per layer from a per-dimension
vocabulary; a frequency in [0, 1). The same seed gives byte-identical regions.

Text is cut from one generated corpus per seed (built with numpy in a single join), not
generated word by word: building all 14 dimensions takes about 0.1 s.

The sample is for the demo, the stress test and the docs, never a default: a Coordinator starts
empty and serves the sample only when asked, ``Coordinator(name, data_dir=shmpool.SAMPLE)`` (or
``data_dir=shmpool.sample_dir()``, the folder it is built into once per seed).
"""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np
from filelock import FileLock
from ..substrate._log import logger

from ..substrate.names import runtime_dir
from ..errors import InvalidArgument
from .region import FORMAT_VERSION
from .region_builder import RegionBuilder

__all__ = ["CORE_DIMENSIONS", "SAMPLE", "SampleData", "build_sample", "sample_builders", "sample_dir"]


class SampleData(enum.Enum):
    """The type of :data:`SAMPLE` (an enum member: a singleton that type checkers understand)."""
    SAMPLE = "the built-in sample"

    def __repr__(self) -> str:
        return "shmpool.SAMPLE"

    __str__ = __repr__


SAMPLE = SampleData.SAMPLE
"""``Coordinator(name, data_dir=SAMPLE)`` serves the built-in sample (of ``sample_seed``)."""

CORE_DIMENSIONS: dict[int, str] = {
    1: "identity", 2: "temporal", 3: "spatial", 4: "causal", 5: "emotional", 6: "social",
    7: "linguistic", 8: "procedural", 9: "semantic", 10: "episodic", 11: "sensory", 12: "ethical",
    13: "aesthetic", 14: "meta",
}

# (smallest, largest, share of layers): sizes are log-uniform inside a band.
SIZE_BANDS = ((64, 1024, 0.03), (1024, 8192, 0.79), (8192, 65536, 0.15), (65536, 262144, 0.03))
TEXT_SHARE = 0.9
_CORPUS_BYTES = 1 << 20  # > 2 x the largest layer, so a slice never runs off the end
_KEYWORDS_PER_DIMENSION = 48

# Some words are not ASCII, so UTF-8 validation of text layers is exercised for real.
_WORDS = tuple("""
the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were her all she there would their we him been has when who will more no if out
so said what up its about into than them can only other new some could time these two may then
do first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go
came right used take three memory signal river window garden lantern harbor meadow thunder
velvet copper silver marble orchard compass voyage ember glacier canyon prairie summit
café naïve façade über jalapeño smörgåsbord crème résumé 東京 数据 μνήμη память
""".split())
_KEYWORD_WORDS = tuple(w for w in _WORDS if 3 <= len(w.encode()) <= 10)


def _corpus(seed: int) -> bytes:
    """About 1 MiB of words separated by single spaces; cut into text layers at word boundaries."""
    rng = np.random.default_rng([seed, 0])
    words = np.array([w.encode() for w in _WORDS], dtype=object)
    return b" ".join(words[rng.integers(0, len(words), _CORPUS_BYTES // 5)].tolist())


def _sizes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Exact band counts (rounded, the rest to the 1-8 KiB band), log-uniform inside each band."""
    counts = [round(share * count) for _, _, share in SIZE_BANDS]
    counts[1] += count - sum(counts)
    sizes = np.concatenate([np.exp(rng.uniform(np.log(lo), np.log(hi), n))
                            for (lo, hi, _), n in zip(SIZE_BANDS, counts)])
    return np.clip(rng.permutation(sizes).astype(np.int64), 64, 262144)


def _text(rng: np.random.Generator, corpus: bytes, size: int, keywords: list[str]) -> str:
    """Exactly ``size`` UTF-8 bytes (or the keyword line, if longer): the keywords, then corpus words."""
    head = (" ".join(keywords) + "\n").encode()
    room = max(size - len(head), 0)
    start = corpus.find(b" ", int(rng.integers(0, len(corpus) - room - 64))) + 1
    end = start + room
    while end > start and corpus[end] & 0xC0 == 0x80:  # never cut a multi-byte character
        end -= 1
    return (head + corpus[start:end] + b" " * (start + room - end)).decode()


def _dimension(seed: int, dimension_id: int, name: str, count: int, corpus: bytes) -> RegionBuilder:
    rng = np.random.default_rng([seed, dimension_id])
    builder = RegionBuilder(dimension_id, name)
    vocabulary = rng.choice(np.array(_KEYWORD_WORDS, dtype=object), _KEYWORDS_PER_DIMENSION, replace=False)
    sizes = _sizes(rng, count)
    text = rng.permutation(np.arange(count) < round(TEXT_SHARE * count))
    frequencies = rng.random(count)
    keyword_counts = rng.integers(1, 6, count)
    for row in range(count):
        keywords = rng.choice(vocabulary, keyword_counts[row], replace=False).tolist()
        size = int(sizes[row])
        if text[row]:
            content: str | bytes = _text(rng, corpus, size, keywords)
        else:
            content = rng.standard_normal(size // 4, dtype=np.float32).astype("<f4").tobytes()
        builder.add_layer(row + 1, content, frequency=float(frequencies[row]), keywords=keywords)
    return builder


def sample_builders(seed: int = 0, layers_per_dimension: int = 200) -> list[RegionBuilder]:
    """One RegionBuilder per core dimension (ids 1..14), deterministic from ``seed``."""
    if layers_per_dimension < 0:
        raise InvalidArgument(argument="layers_per_dimension", value=layers_per_dimension, reason="must be >= 0")
    corpus = _corpus(seed)
    return [_dimension(seed, dim, name, layers_per_dimension, corpus) for dim, name in CORE_DIMENSIONS.items()]


def build_sample(directory: str | Path, seed: int = 0, layers_per_dimension: int = 200) -> list[Path]:
    """Write the sample as ``dim-<id:02d>-<name>.region`` files into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [builder.write(directory / f"dim-{builder.dimension_id:02d}-{builder.name}.region")
            for builder in sample_builders(seed, layers_per_dimension)]


def sample_dir(seed: int = 0) -> Path:
    """The folder of the sample's region files for ``seed``, built on first use (about 0.1 s).

    It lives in the runtime folder (``sample-seed<seed>-v<format>``) and is built once, under a
    file lock, so concurrent first users wait for one build instead of racing.
    """
    target = runtime_dir() / f"sample-seed{seed}-v{FORMAT_VERSION}"
    done = target / ".complete"
    if done.exists():
        return target
    with FileLock(str(target) + ".lock"):
        if not done.exists():
            target.mkdir(exist_ok=True)
            build_sample(target, seed=seed)
            done.touch()
            logger.info("built the sample data set (seed {}) in {}", seed, target)
    return target
