"""Analysis reads annotation's votes and renders numbers; the one thing it writes back is an adaptive campaign's
pair priorities, through annotation's service. One module per part:

- ``values``: the report as frozen plain values, with display strings;
- ``reports``: ``build_report`` (the numbers of ``analysis.stats`` over a campaign's votes);
- ``win_rates``: the campaign page's live win rates (cached per vote snapshot);
- ``adaptive_pairs``: an adaptive campaign's model pairs ranked from its votes, written as the engine's priorities;
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
