"""Analysis reads annotation's votes and renders numbers; besides its own records (decisions, judge scores), what it
writes back goes through annotation's services: an adaptive campaign's pair priorities, and closing a "stop when
decided" campaign. One module per part:

- ``values``: the report as frozen plain values, with display strings;
- ``reports``: ``build_report`` (the numbers of ``analysis.stats`` over a campaign's votes);
- ``win_rates``: the campaign page's live win rates (cached per vote snapshot);
- ``adaptive_pairs``: an adaptive campaign's model pairs ranked from its votes, written as the engine's priorities;
- ``decisions``: the anytime-valid confidence sequences and "stop when decided";
- ``judges``: storing an automatic judge's scores of pairs (the judge itself is the training app's);
- ``prediction_powered``: AI-assisted (PPI++) win rates from an automatic judge's scores and the human votes;
- ``exports``: the CSV exports and the JSON, HTML and PDF renderings.

This package re-exports their public names: ``from analysis import services``, ``services.build_report(...)``.
"""

from .adaptive_pairs import (  # noqa: F401
    live_adaptive_campaigns,
    pair_ranking,
    primary_criterion,
    refresh_pair_priorities,
    win_matrix,
)
from .decisions import (  # noqa: F401
    SEQUENCE_LEVEL,
    campaigns_to_decide,
    check_decision,
    decision_level,
    decision_summaries,
    prompt_sequence,
    sequence_summaries,
    stop_rule,
)
from .exports import (  # noqa: F401
    EXPORT_FORMATS,
    FORMAT_ALIASES,
    ITEMS_CSV_COLUMNS,
    VOTES_CSV_COLUMNS,
    Export,
    ExportFormat,
    export,
    export_filename,
    export_format,
    find_campaign,
    items_csv,
    report_figures,
    report_html,
    report_json,
    report_pdf,
    votes_csv,
)
from .judges import (  # noqa: F401
    JudgeScoreError,
    judged_pairs,
    record_judge_scores,
)
from .prediction_powered import (  # noqa: F401
    judged_data,
    prediction_powered_summaries,
)
from .reports import (  # noqa: F401
    ReportError,
    analysed_votes,
    build_report,
    campaign_comparisons,
    check_options,
    code_version,
    counting_votes,
    design_effect,
    exclusion_rule,
    votes_snapshot_sha256,
)
from .values import *  # noqa: F403 (its __all__)
from .win_rates import (  # noqa: F401
    campaign_win_rates,
)
