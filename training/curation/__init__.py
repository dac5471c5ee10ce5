"""The automatic half of Emu's curation funnel, without Django.

Emu narrows billions of images to a few thousand "photogenic needles": automatic
filters first (offensive content, aesthetic score, OCR text, CLIP image-text
score, resolution and aspect ratio), then people in two stages. This module is
the automatic part for a local candidate collection; the Django side (models,
Celery tasks, the human stages, pages) calls it. One module per part: ``candidates``, ``near_duplicates``,
``features``, ``stages``, ``funnel``, ``contact_sheet``; this package re-exports their public names.

1. ``scan_candidates(folder)`` imports a folder of images with a ``captions.csv``
   (``file,caption``) or ``captions.jsonl`` (``{"file": ..., "caption": ...}``;
   the imagefolder keys ``file_name``/``text`` of curated datasets are accepted
   too). Every image is decoded fully; each problem is reported in words with its
   file name or caption line, and good files import regardless. It only reads.
2. ``run_funnel(candidates, stages, scorer=..., aesthetic_head=...)`` passes the
   candidates through configurable stages (frozen dataclasses), recording counts
   in and out, each stage's configuration, each rejection's reason and
   per-candidate scores. CLIP embeddings are computed once per candidate, in
   batches, only for candidates that reach a stage needing them, and shared by
   ``NearDuplicateStage`` (when an aesthetic head is given), ``ClipScoreStage``
   and ``AestheticStage``.
3. ``FunnelResult.report()`` summarises it (JSON-ready), ``contact_sheet`` draws
   a grid of kept or rejected examples.

Score conventions: CLIP score = ``100 * cos`` (see ``training.clip_scoring``);
aesthetic score = LAION head output on the 1-10 scale (``training.aesthetic``).
"""

from .candidates import (  # noqa: F401
    CAPTION_FILES,
    SUPPORTED_FORMATS,
    SUPPORTED_SUFFIXES,
    UNSUPPORTED_IMAGE_SUFFIXES,
    CandidateScan,
    FunnelCandidate,
    ImportProblem,
    scan_candidates,
    to_rgb,
)
from .contact_sheet import (  # noqa: F401
    SHEET_HEADER_HEIGHT,
    SHEET_LABEL_LINES,
    SHEET_LINE_HEIGHT,
    SHEET_PADDING,
    contact_sheet,
    contact_sheet_size,
)
from .errors import (  # noqa: F401
    CurationError,
)
from .features import (  # noqa: F401
    FunnelFeatures,
)
from .funnel import (  # noqa: F401
    FunnelResult,
    StageRecord,
    histogram,
    run_funnel,
)
from .near_duplicates import (  # noqa: F401
    hamming,
    near_duplicate_pairs,
    perceptual_hash,
)
from .stages import (  # noqa: F401
    AestheticStage,
    ClipScoreStage,
    FunnelStage,
    NearDuplicateStage,
    Rejection,
    ResolutionStage,
    TextInImageStage,
    count_words,
    default_stages,
    ocr_unavailable_reason,
)
