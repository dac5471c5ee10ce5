"""Annotation's operations, one module per domain concept; this package re-exports their public names.

- ``campaigns``: settings and the rules that freeze them, create, edit, launch, pause, resume, close;
- ``items``: the comparison items a launch builds, and gold;
- ``served_images``: the images raters receive (one byte length per campaign);
- ``enrolment``: invite links, crowd ids, joining, consent;
- ``assignment``: the assignment engine (the next tasks under the k cap, no repeats, balance);
- ``pair_priorities``: the order an adaptive campaign's model pairs get votes in;
- ``votes``: recording a vote;
- ``quality_control``: gold, speeders, exclusions, how a rater's study ends;
- ``errors``: ``AnnotationError`` and its kin.

Callers use ``from annotation import services`` and ``services.create_campaign(...)``; tests that reach into an
engine's private steps import the module itself.
"""

from .assignment import (  # noqa: F401
    CRITERION_BLOCK,
    LOOKAHEAD,
    PLACEMENT_BOUND,
    PROMPT_SPREAD,
    SWEEP_EVERY,
    expire_leases,
    next_assignment,
    open_tasks,
    single_statement_writes,
)
from .campaigns import (  # noqa: F401
    FREE_FIELDS,
    GOLD_RULE_FIELDS,
    MAX_CONSENT_TEXT,
    MAX_CONTACT,
    MAX_GOLD_MIN_ANSWERS,
    MAX_QUOTA,
    MAX_RATERS_PER_LINK,
    MAX_SPEEDER_SECONDS,
    MAX_TEXT,
    MIN_DECISION_WIDTH,
    MIN_HUMAN_SHARE,
    OPERATIONAL_FIELDS,
    STRUCTURAL_FIELDS,
    apply_campaign_action,
    check_text,
    create_campaign,
    editable_settings,
    finish_launch,
    generation_batch_for,
    guaranteed_gold_answers,
    is_whole,
    launch_campaign,
    set_status,
    update_campaign,
)
from .enrolment import (  # noqa: F401
    CROWD_ID_MAX_LENGTH,
    CROWD_PARAMETERS,
    PARTICIPATION_TAKEN,
    CrowdIdError,
    ParticipationTaken,
    create_invite_link,
    crowd_ids,
    has_crowd_id,
    invite_account,
    invite_link_for,
    join_with_invite,
    record_consent,
)
from .errors import (  # noqa: F401
    AnnotationError,
)
from .items import (  # noqa: F401
    build_items,
    degrade,
    gold_items_needed,
    human_prompts,
)
from .pair_priorities import (  # noqa: F401
    adaptive_pairs_possible,
    reset_pair_priorities,
    set_pair_priorities,
)
from .quality_control import (  # noqa: F401
    EXCLUSION_ATTEMPTS,
    SCREENED_OUT_VOTE,
    SPEEDER_MIN_GAPS,
    SPEEDER_WINDOW,
    RaterEnding,
    complete_if_done,
    end_if_out_of_tasks,
    exclude_if_failing_gold,
    exclude_rater,
    flag_if_speeding,
    median_seconds_between_votes,
    rater_ending,
)
from .served_images import (  # noqa: F401
    padded_image,
    rater_image,
    served_image_length,
    shown_image_file,
)
from .votes import (  # noqa: F401
    ParticipationEnded,
    VoteResult,
    submit_vote,
)
