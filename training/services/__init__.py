"""Operations of the training app, one module per concept; this package only re-exports their public names, so
``from training import services; services.create_run(...)`` serves views, admin, commands, tasks and tests.

- ``common``: TrainingError, the places on disk (training_dir, cache_dir, models_dir), the rule for new names.
- ``datasets``: import and verify curated datasets; freeze a selection of candidates into one.
- ``runs``: a run's settings (build_config), its base model, creating, starting and cancelling runs.
- ``trainer``: the quality-tuning task's body (execute_run): claim the run, start the trainer, follow its metrics
  and checkpoints, record how it ended. The process itself (spawning, locking, reading its log) is the pure
  module ``training.trainer_process``.
- ``registration``: a checkpoint exported and registered as a model; a tuned-vs-base campaign.
- ``checkpoint_campaigns``: the campaign that compares every checkpoint of a run with its base.
- ``aesthetic_scoring``: CLIP and an aesthetic head score validation images (the automatic pick's writes); a head
  trained from people's ratings.
- ``judge_scores``: the aesthetic head as an automatic judge of a campaign's pairs (AI-assisted win rates).
- ``curation_runs``: candidate collections, the funnel's stage settings, curation runs.
- ``reviews``: the human curation stages (imported as ``training.services.reviews``, not re-exported here).

Reads are in ``training.selectors``: whether a run is stale, lost or may start (is_stale, is_lost, can_start,
trainer_is_dead), the checkpoints' win rates, the automatic pick, the last scoring warning.
"""

from training.services.aesthetic_scoring import (
    FollowerScoring,
    load_aesthetic_scoring,
    score_validation_images,
    train_aesthetic_head_from_ratings,
    validation_images,
)
from training.services.checkpoint_campaigns import CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM, create_checkpoint_campaign
from training.services.common import TrainingError, cache_dir, check_new_name, models_dir, training_dir
from training.services.curation_runs import (
    CLIP_STAGE_KINDS,
    CURATION_LOCK_FILE,
    STAGE_KINDS,
    create_curation_run,
    curation_contact_sheet,
    curation_dir,
    curation_run_dir,
    default_stage_config,
    execute_curation_run,
    funnel_candidate,
    funnel_result_from_outcomes,
    import_candidate_collection,
    stages_from_config,
    stages_to_config,
    start_curation_run,
)
from training.services.datasets import freeze_curated_dataset, import_curated_dataset, verify_dataset
from training.services.judge_scores import JUDGE_SCALE, judge_probability, score_campaign_pairs
from training.services.registration import create_tuned_vs_base_campaign, default_model_name, register_checkpoint
from training.services.runs import build_config, cancel_run, check_base_model, create_run, start_run
from training.services.trainer import (
    DYING_TRAINER_WAIT_SECONDS,
    TRAINER_MODULE,
    Follower,
    check_base_model_files,
    config_flags,
    execute_run,
    trainer_command,
)

__all__ = [
    "JUDGE_SCALE",
    "judge_probability",
    "score_campaign_pairs",
    "CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM",
    "CLIP_STAGE_KINDS",
    "CURATION_LOCK_FILE",
    "DYING_TRAINER_WAIT_SECONDS",
    "STAGE_KINDS",
    "TRAINER_MODULE",
    "Follower",
    "FollowerScoring",
    "TrainingError",
    "build_config",
    "cache_dir",
    "cancel_run",
    "check_base_model",
    "check_base_model_files",
    "check_new_name",
    "config_flags",
    "create_checkpoint_campaign",
    "create_curation_run",
    "create_run",
    "create_tuned_vs_base_campaign",
    "curation_contact_sheet",
    "curation_dir",
    "curation_run_dir",
    "default_model_name",
    "default_stage_config",
    "execute_curation_run",
    "execute_run",
    "freeze_curated_dataset",
    "funnel_candidate",
    "funnel_result_from_outcomes",
    "import_candidate_collection",
    "import_curated_dataset",
    "load_aesthetic_scoring",
    "models_dir",
    "register_checkpoint",
    "score_validation_images",
    "stages_from_config",
    "stages_to_config",
    "start_curation_run",
    "start_run",
    "train_aesthetic_head_from_ratings",
    "trainer_command",
    "training_dir",
    "validation_images",
    "verify_dataset",
]
