"""The fine-pruning trainer: state, pure train/eval steps, and the driver `train_and_evaluate`.

`train_step` and `eval_step` are module-level pure functions; the driver compiles them once with
`jax.jit` over a ('data', 'model') mesh with explicit shardings. Masks are never stored: every
step recomputes them from (scores, level), and the level and lambda come from the optimizer state
(`optim.track_schedules`), so checkpoints hold everything needed to continue exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from mvp_jax import (
  checkpoint,
  distill,
  logging_utils,
  optim,
  pruning,
  regularizers,
  report,
  run_config,
  run_io,
  schedules,
  sharding,
)
from mvp_jax.data import batching, tasks, tokenization
from mvp_jax.errors import UserError
from mvp_jax.models import hf

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly.

  Attributes:
    step: int32 scalar, train_step calls so far (micro-steps when accumulating).
    params: the model's params tree (HF Flax BERT names), float32.
    scores: the 'scores' collection: same paths as the pruned kernels, float32 ({} if none).
    opt_state: the optax state; holds the pruning level and lambda of the next step.
    rng: uint32[2] raw PRNG key; step keys are derived by folding in `step`.
  """

  step: jax.Array
  params: PyTree
  scores: PyTree
  opt_state: PyTree
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """Static (hashable) options of the train step."""

  kind: str  # "classification" | "regression" | "qa"
  spec: pruning.PruningSpec | None  # None: dense fine-tuning
  distill: bool = False
  alpha_ce: float = 1.0
  alpha_distil: float = 0.0
  temperature: float = 2.0
  # Log `mask_churn` on micro-steps whose count (after the step) is a multiple of this; 0 = never.
  churn_every: int = 0


class Preempted(Exception):
  """Raised after a checkpoint was written in response to SIGTERM/SIGINT."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved")
    self.signum = signum
    self.step = step


# ----------------------------------------------------------------------------- pure functions


def forward(model: Any, params: PyTree, batch: Mapping[str, jax.Array], *, deterministic: bool,
            dropout_rng: jax.Array | None = None) -> Any:
  """Model outputs: logits [B, C], or (start [B, L], end [B, L]) for QA."""
  rngs = None if deterministic else {"dropout": dropout_rng}
  return model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                     batch["token_type_ids"], deterministic=deterministic, rngs=rngs)


def task_loss(outputs: Any, batch: Mapping[str, jax.Array], kind: str) -> jax.Array:
  """Mean task loss over the rows with weight > 0 (float32 scalar).

  classification: softmax cross-entropy; regression: squared error on logits[:, 0];
  qa: mean of the start and end cross-entropies over all positions (as the reference).
  """
  w = batch["weights"].astype(jnp.float32)
  denom = jnp.maximum(w.sum(), 1.0)
  if kind == "qa":
    start, end = outputs
    length = start.shape[-1]
    sp = jnp.clip(batch["start_positions"], 0, length - 1)
    ep = jnp.clip(batch["end_positions"], 0, length - 1)
    ce = (optax.softmax_cross_entropy_with_integer_labels(start.astype(jnp.float32), sp)
          + optax.softmax_cross_entropy_with_integer_labels(end.astype(jnp.float32), ep)) / 2
  elif kind == "regression":
    ce = (outputs[:, 0].astype(jnp.float32) - batch["labels"].astype(jnp.float32)) ** 2
  else:
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32),
                                                         batch["labels"])
  return (ce * w).sum() / denom


def distill_loss(student: Any, teacher: Any, batch: Mapping[str, jax.Array], kind: str,
                 temperature: float) -> jax.Array:
  """T^2 * KL(teacher || student) at temperature T (spec §3.2), over rows with weight > 0."""
  if kind == "qa":
    return distill.qa_kd_loss(student, teacher, temperature, weights=batch["weights"])
  return distill.kd_loss(student, teacher, temperature, weights=batch["weights"])


def train_step(state: TrainState, batch: Mapping[str, jax.Array], teacher_params: PyTree, *,
               model: Any, teacher_model: Any, tx: optax.GradientTransformation,
               opts: StepOptions) -> tuple[TrainState, dict[str, jax.Array]]:
  """One micro-step: masked forward/backward, optimizer update. Pure; jit it once.

  Args:
    state: the TrainState.
    batch: input_ids/attention_mask/token_type_ids int32 [B, L], weights float32 [B], and
      labels [B] or start_positions/end_positions [B].
    teacher_params: the dense teacher's params (ignored unless `opts.distill`).
    model, teacher_model: Linen modules (closed over, static).
    tx: the optimizer from `optim.make_optimizer` (closed over, static).
    opts: static step options.

  Returns:
    (new state, metrics: loss, task_loss, distill_loss, regularizer, level, lambda, grad_norm;
    with ``opts.churn_every`` also mask_churn: `pruning.mask_change` between the deterministic
    masks before and after this update at this step's level, computed only on the micro-steps it
    names and 0 on the others).
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  dropout_rng, mask_rng = jax.random.split(key)
  sched = optim.schedule_values(state.opt_state)
  level, lam = sched["level"], sched["lam"]
  spec = opts.spec

  teacher_out = None
  if opts.distill:
    teacher_out = jax.lax.stop_gradient(
      forward(teacher_model, teacher_params, batch, deterministic=True))

  def loss_fn(trainable):
    params = trainable["params"]
    masks = {}
    if spec is not None:
      masks = pruning.compute_masks(params, trainable["scores"], level, spec,
                                    rng=mask_rng if spec.method == "l0" else None)
      params = pruning.multiply_masks(params, masks)
    out = forward(model, params, batch, deterministic=False, dropout_rng=dropout_rng)
    ce = task_loss(out, batch, opts.kind)
    kd = jnp.zeros((), jnp.float32)
    loss = ce
    if opts.distill:
      kd = distill_loss(out, teacher_out, batch, opts.kind, opts.temperature)
      loss = opts.alpha_ce * ce + opts.alpha_distil * kd
    reg = jnp.zeros((), jnp.float32)
    if spec is not None and spec.method in ("sigmoid_threshold", "l0"):
      reg = regularizers.regularizer(trainable["scores"], spec)
      loss = loss + lam * reg
    return loss, ({"task_loss": ce, "distill_loss": kd, "regularizer": reg}, masks)

  trainable = {"params": state.params, "scores": state.scores}
  (loss, (aux, step_masks)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  return apply_gradients(state, grads, step_masks, {"loss": loss, **aux}, tx=tx, opts=opts)


def apply_gradients(state: TrainState, grads: PyTree, step_masks: PyTree,
                    metrics: dict[str, jax.Array], *, tx: optax.GradientTransformation,
                    opts: StepOptions, edit_scores: Callable | None = None
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimizer update of a micro-step whose gradients are computed: the second half of
  `train_step`, shared with the diagnostic steps in benchmarks/.

  Args:
    state: the TrainState the gradients were computed at.
    grads: {"params": ..., "scores": ...}, the trainable trees' gradients.
    step_masks: the masks the forward used ({} for dense).
    metrics: the step's loss terms; the level, lambda, grad_norm (and mask_churn) are added.
    tx, opts: as `train_step`.
    edit_scores: None, or ``f(old scores, updated scores) -> scores`` applied to the update
      before the mask churn is measured (diagnostics: see benchmarks/).
  """
  sched = optim.schedule_values(state.opt_state)
  level, lam = sched["level"], sched["lam"]
  spec = opts.spec
  trainable = {"params": state.params, "scores": state.scores}
  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  scores = (trainable["scores"] if edit_scores is None
            else edit_scores(state.scores, trainable["scores"]))
  new_state = state.replace(step=state.step + 1, params=trainable["params"], scores=scores,
                            opt_state=opt_state)
  metrics = {**metrics, "level": level, "lambda": lam, "grad_norm": optax.tree.norm(grads)}
  if spec is not None and opts.churn_every:
    # The masks before the update are the forward's, except for l0, which trained on a sample.
    before = None if spec.method == "l0" else jax.lax.stop_gradient(step_masks)

    def churn(before):
      if before is None:
        before = pruning.compute_masks(state.params, state.scores, level, spec)
      return pruning.mask_change(
        before, pruning.compute_masks(new_state.params, new_state.scores, level, spec))
    metrics["mask_churn"] = jax.lax.cond(new_state.step % opts.churn_every == 0, churn,
                                         lambda _: jnp.zeros((), jnp.float32), before)
  return new_state, metrics


def eval_step(params: PyTree, batch: Mapping[str, jax.Array], *, model: Any) -> Any:
  """Deterministic outputs on already-masked params (mask once per evaluation, not per batch)."""
  return forward(model, params, batch, deterministic=True)


# ----------------------------------------------------------------------------- set-up helpers


def level_schedules(config: ml_collections.ConfigDict, steps: int
                    ) -> tuple[optax.Schedule, optax.Schedule]:
  """(level(t), lambda(t)) over optimizer steps t, as the reference's schedule_threshold."""
  p = config.pruning
  t_i, t_f = run_config.pruning_window(config, steps)
  if p.method == "l0":
    # L0 uses no level; lambda stays at final_lambda from step 0 (theta_i = theta_f = 1).
    return optax.constant_schedule(1.0), optax.constant_schedule(float(p.final_lambda))
  if p.method == "none":
    return optax.constant_schedule(1.0), optax.constant_schedule(0.0)
  level = schedules.cubic_schedule(p.initial_level, p.final_level, steps, t_i, t_f)
  if p.method == "sigmoid_threshold" and p.final_lambda > 0:
    lam = schedules.lambda_schedule(p.final_lambda, level, p.final_level)
  else:
    lam = optax.constant_schedule(0.0)
  return level, lam


def _partition_rules(name: str):
  return {"data_parallel": sharding.DATA_PARALLEL_RULES,
          "tensor_parallel": sharding.BERT_TENSOR_PARALLEL_RULES}[name]


def _override_dropout(model: Any, config: ml_collections.ConfigDict) -> Any:
  changes = {}
  for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
    if config.model[name] >= 0:
      changes[name] = float(config.model[name])
  if not changes:
    return model
  return model.clone(config=dataclasses.replace(model.config, **changes))


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  path = workdir / "config.json"
  if not path.exists():
    return
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e}); it is not a run of this trainer. Use "
                    "another --workdir.") from e
  diffs = run_config.config_differences(saved, config)
  if diffs and not config.train.allow_config_change:
    shown = ", ".join(diffs[:8]) + (" ..." if len(diffs) > 8 else "")
    raise UserError(f"{workdir} holds a run with a different config ({shown}). Use a new "
                    "--workdir, or pass --config.train.allow_config_change=True to resume anyway.")


def _load_teacher(config: ml_collections.ConfigDict, task: tasks.Task, head: str, dtype: Any):
  teacher_path = config.distill.teacher
  # Issue 7: load the teacher with its own label count (num_labels=None) and compare it with the
  # task's, so a teacher of another task is named as such rather than as a head-shape mismatch.
  teacher_model, teacher_params = hf.load_pretrained(teacher_path, head=head, num_labels=None,
                                                     dtype=dtype, require_head=True)
  t_labels = tuple(getattr(teacher_model.config, "label_names", ()) or ())
  t_count = getattr(teacher_model.config, "num_labels", task.num_labels)
  if head == "classification" and t_count != task.num_labels:
    shown = f" {t_labels}" if t_labels else ""
    raise UserError(f"config.distill.teacher: {teacher_path} was trained on {t_count} labels"
                    f"{shown}, but the task has {task.num_labels}"
                    f"{' ' + str(tuple(task.label_names)) if task.label_names else ''}. Use a "
                    "teacher fine-tuned on this task.")
  if head == "classification" and t_labels and task.label_names and \
      tuple(t_labels) != tuple(task.label_names):
    raise UserError(f"config.distill.teacher: {teacher_path} was trained on labels {t_labels}, "
                    f"but the task has {tuple(task.label_names)}. Use a teacher fine-tuned on "
                    "this task.")
  return teacher_model, teacher_params


def _dtype(name: str) -> Any:
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _gather_outputs(out: Any) -> Any:
  """Device outputs -> host numpy (full global arrays on every process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                        out)
  return jax.tree.map(np.asarray, out)


def evaluate(eval_fn: Callable, params: PyTree, features: Mapping[str, np.ndarray], task: Any,
             eval_set: str | None, batch_size: int, mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Runs the model over every eval feature exactly once and computes the task's metrics.

  Batches are padded with weight-0 rows (and cut to length buckets); `collect_eval` drops the
  padding and aligns the QA logits of different bucket widths.
  """
  outputs, weights = [], []
  for batch in batching.eval_batches(features, batch_size, process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    global_batch = sharding.global_batch(batch, mesh)
    outputs.append(_gather_outputs(eval_fn(params, global_batch)))
    weights.append(_gather_outputs(global_batch["weights"]))
  if task.kind == "qa":
    preds = (batching.collect_eval([o[0] for o in outputs], weights),
             batching.collect_eval([o[1] for o in outputs], weights))
  else:
    preds = batching.collect_eval(outputs, weights)
  return task.compute_metrics(preds, eval_set=eval_set)


# ----------------------------------------------------------------------------- driver


def _check_prng_impl(saved: str | None, where: pathlib.Path) -> None:
  """Refuses to continue a run whose checkpoint was written under another
  ``jax_default_prng_impl``: its key would be read as another implementation's (threefry2x32
  keys are uint32[2], rbg and unsafe_rbg ones uint32[4]; between rbg and unsafe_rbg nothing else
  would notice, and the random stream would silently change). ``saved`` None: a checkpoint from
  before the implementation was recorded, not checked."""
  impl = jax.config.jax_default_prng_impl
  if saved is not None and saved != impl:
    hint = "unset it" if saved == "threefry2x32" else f"JAX_DEFAULT_PRNG_IMPL={saved}"
    raise UserError(f"the checkpoints in {where} were written under jax_default_prng_impl="
                    f"{saved!r} but this process uses {impl!r}; resume with the same "
                    f"implementation ({hint}), or use a new --workdir.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       *, step_fn: Callable | None = None) -> dict[str, Any]:
  """Fine-prunes a BERT as `config` says, writing everything to `workdir`.

  Re-running with the same workdir resumes from the latest checkpoint; a finished run is not
  retrained. Returns the final results (the content of eval_results.json). `step_fn` replaces
  `train_step` (same signature; None: `train_step`): for diagnostics such as
  benchmarks/score_gradient_intervention.py, not a training option.
  """
  step_fn = train_step if step_fn is None else step_fn
  run_config.validate(config)
  workdir = pathlib.Path(workdir)
  if config.distributed.coordinator_address == "auto":
    sharding.initialize_distributed()  # TPU pods / SLURM: JAX finds the cluster itself
  elif config.distributed.num_processes > 1:
    sharding.initialize_distributed(config.distributed.coordinator_address,
                                    config.distributed.num_processes,
                                    config.distributed.process_id)
  main = jax.process_index() == 0
  _check_workdir_config(workdir, config)

  # --- data and model (host side, nothing compiled yet)
  model_dir = hf.resolve_model_dir(config.model.name_or_path)
  tokenizer = tokenization.load_tokenizer(model_dir, max_length=config.data.max_seq_length)
  task = tasks.build_task(config.data, tokenizer)
  head = "qa" if task.kind == "qa" else "classification"
  dtype = _dtype(config.model.dtype)
  model, init_params = hf.load_pretrained(str(model_dir), head=head, num_labels=task.num_labels,
                                          dtype=dtype, seed=config.seed)
  model = _override_dropout(model, config)
  spec = run_config.pruning_spec(config)
  n_train = len(task.train_features["input_ids"])
  steps = run_config.total_steps(config, n_train)
  accum = int(config.optim.grad_accum_steps)
  level_fn, lambda_fn = level_schedules(config, steps)
  final_level = run_config.eval_level(config)

  try:
    mesh = sharding.make_mesh(tuple(config.mesh.shape))
  except ValueError as e:
    raise UserError(f"config.mesh.shape: {e}") from e
  for field in ("batch_size", "eval_batch_size"):
    try:
      sharding.check_batch_divisible(config.train[field] // jax.process_count() *
                                     jax.process_count(), mesh)
      if config.train[field] % jax.process_count():
        raise ValueError(f"it is not divisible by the {jax.process_count()} processes")
    except ValueError as e:
      raise UserError(f"config.train.{field}={config.train[field]}: {e}") from e
  rules = _partition_rules(config.mesh.rules)

  teacher_model = teacher_params = None
  if config.distill.teacher:
    teacher_model, teacher_params = _load_teacher(config, task, head, dtype)
  opts = StepOptions(kind=task.kind, spec=spec, distill=bool(config.distill.teacher),
                     alpha_ce=float(config.distill.alpha_ce) if config.distill.teacher else 1.0,
                     alpha_distil=float(config.distill.alpha_distil),
                     temperature=float(config.distill.temperature),
                     churn_every=(config.train.log_every_steps * accum
                                  if config.train.log_mask_churn else 0))

  if main:
    workdir.mkdir(parents=True, exist_ok=True)

  # --- state: shapes first, then shardings, then values placed straight into them
  rng = jax.random.PRNGKey(config.seed)
  score_rng, state_rng = jax.random.split(rng)
  scores0 = pruning.init_scores(init_params, spec, score_rng) if spec is not None else {}
  tx = optim.make_optimizer(
    {"params": init_params, "scores": scores0},
    learning_rate=config.optim.learning_rate, score_learning_rate=config.optim.score_learning_rate,
    weight_decay=config.optim.weight_decay, warmup_steps=config.optim.warmup_steps,
    total_steps=steps, max_grad_norm=config.optim.max_grad_norm, adam_eps=config.optim.adam_eps,
    grad_accum_steps=accum, level_schedule=level_fn, lambda_schedule=lambda_fn)

  def init_state(params, scores, key):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, scores=scores,
                      opt_state=tx.init({"params": params, "scores": scores}),
                      rng=jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                      else key)

  abstract = jax.eval_shape(init_state, init_params, scores0, state_rng)
  state_sharding = sharding.tree_shardings(abstract, mesh, rules)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.train.keep_checkpoints,
                                 best_metric=primary_metric(task), best_mode="max")
  latest = ckpt.latest_step()
  train_iter = batching.BatchIterator(
    task.train_features, batch_size=config.train.batch_size, seed=config.seed, shuffle=True,
    drop_remainder=True, process_index=jax.process_index(), process_count=jax.process_count())

  if latest is not None:
    _check_prng_impl(ckpt.restore_extra(latest).get("prng_impl"), workdir / "checkpoints")
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sharding)
    try:
      state, extra = ckpt.restore(latest, target)
    except ValueError as e:
      # Reliability (issue 7): a checkpoint of another model/pruning shape (reachable with
      # train.allow_config_change) is a user error, reported in one line without a traceback.
      raise UserError(" ".join(str(e).split()) + ". Use a new --workdir, "
                      f"or the config that wrote {workdir / 'checkpoints'}.") from None
    train_iter.restore(extra["data"])
    logging.info("Resumed from step %d (optimizer step %d) in %s", latest, latest // accum,
                 workdir / "checkpoints")
  else:
    state = jax.jit(init_state, out_shardings=state_sharding)(init_params, scores0, state_rng)
  del init_params, scores0
  if main:
    # Written only now (issue 7): a run refused above (e.g. a checkpoint that does not fit) leaves
    # the workdir's config.json as it was.
    run_io.write_atomic(workdir / "config.json", run_config.to_json(config))
    run_io.write_atomic(workdir / "labels.json",
                  json.dumps({"kind": task.kind, "label_names": list(task.label_names or [])}))

  total_micro = steps * accum
  start = int(state.step)
  results_path = workdir / "eval_results.json"
  if start >= total_micro and results_path.exists():
    logging.info("%s already holds a finished run (step %d of %d); not retraining.", workdir,
                 start // accum, steps)
    return json.loads(results_path.read_text())

  # --- compiled steps
  batch_sh = sharding.batch_sharding(mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  teacher_sh = (sharding.tree_shardings(teacher_params, mesh, rules)
                if teacher_params is not None else None)
  if teacher_params is not None:
    teacher_params = jax.device_put(teacher_params, teacher_sh)
  jit_train_step = jax.jit(
    functools.partial(step_fn, model=model, teacher_model=teacher_model, tx=tx, opts=opts),
    in_shardings=(state_sharding, batch_sh, teacher_sh),
    out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  params_sh = state_sharding.params
  jit_eval = jax.jit(functools.partial(eval_step, model=model),
                     in_shardings=(params_sh, batch_sh), out_shardings=replicated)
  # One compiled mask program per run serves the logged counts and the evaluation params (the
  # threshold searches dominate compile time); multiplying the masks in is a separate tiny one.
  jit_masks = (jax.jit(functools.partial(pruning.compute_masks, spec=spec))
               if spec is not None else None)
  jit_multiply = jax.jit(pruning.multiply_masks, out_shardings=params_sh)

  def run_eval(st: TrainState) -> dict[str, float]:
    p = st.params
    if spec is not None:  # the deterministic masks at the final level, folded in once
      p = jit_multiply(st.params, jit_masks(st.params, st.scores, jnp.float32(final_level)))
    out: dict[str, float] = {}
    for name, feats in task.eval_sets.items():
      m = evaluate(jit_eval, p, feats, task, name, config.train.eval_batch_size, mesh)
      out.update({metric_key(task, name, k): v for k, v in m.items()})
    return out

  def remaining(st: TrainState, level: float, masks: Any = None) -> dict[str, Any]:
    if spec is None:
      return {"paper": 1.0, "plain": 1.0}
    if masks is None:
      masks = jit_masks(st.params, st.scores, jnp.float32(level))
    # Only the params' shapes are read: no host copy of the weights.
    return pruning.remaining_weights(st.params, jax.device_get(masks))

  writer = logging_utils.MetricsWriter(workdir, enabled=main)
  stop_signal: dict[str, int | None] = {"signum": None}

  def on_signal(signum, frame):
    del frame
    stop_signal["signum"] = signum

  old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

  jit_all_finite = jax.jit(_all_finite)

  def save(st: TrainState, metrics: dict[str, float] | None = None, force: bool = False) -> None:
    # Issue 7: a finite loss does not prove the update was finite (an overflowing step writes
    # inf/NaN params whose loss only shows one step later), so check the state itself; one
    # reduction per checkpoint.
    if not bool(jit_all_finite(st.params, st.scores)):
      _stop_non_finite(f"non-finite parameters or scores after optimizer step "
                       f"{int(st.step) // accum}; stopped without saving it", ckpt, accum)
    extra = {"data": train_iter.state(), "optimizer_step": int(st.step) // accum,
             "prng_impl": jax.config.jax_default_prng_impl}
    ckpt.save(int(st.step), st, extra=extra, metrics=metrics, force=force)

  progress = None
  if main and config.train.progress_bar:
    from tqdm.auto import tqdm
    progress = tqdm(total=steps, initial=start // accum, desc="fine-pruning", unit="step",
                    dynamic_ncols=True)
  logging.info("Training %d optimizer steps (%d micro-steps of %d examples) from step %d; %s, "
               "final level %.4g; %d devices, mesh %s.", steps, total_micro,
               config.train.batch_size, start // accum, config.pruning.method, final_level,
               jax.device_count(), dict(mesh.shape))

  t_start = time.time()
  last_log_t, last_log_step = time.time(), start
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  eval_metrics: dict[str, float] = {}
  try:
    micro = start
    while micro < total_micro:
      batch = next(train_iter)
      state, metrics = jit_train_step(state, sharding.global_batch(batch, mesh), teacher_params)
      micro += 1
      pending.append((micro, metrics))
      if micro % accum:
        continue
      opt_step = micro // accum
      # Check the previous step's loss (one step of lag keeps the device queue full).
      _check_finite(pending[:-1], accum, ckpt)
      pending = pending[-1:]
      if progress is not None:
        progress.update(1)
      is_last = micro == total_micro
      log_now = config.train.log_every_steps and opt_step % config.train.log_every_steps == 0
      if log_now or is_last:
        _check_finite(pending, accum, ckpt)
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not log_now:
          m.pop("mask_churn", None)  # computed on logging steps only (StepOptions.churn_every)
        rem = remaining(state, m["level"])
        now = time.time()
        m.update(remaining_paper=rem["paper"], remaining_plain=rem["plain"],
                 learning_rate=float(optim.learning_rate_schedule(
                   config.optim.learning_rate, config.optim.warmup_steps, steps)(opt_step - 1)),
                 examples_per_sec=(micro - last_log_step) * config.train.batch_size
                 / max(now - last_log_t, 1e-9))
        last_log_t, last_log_step = now, micro
        writer.write(opt_step, m, prefix="train")
        if progress is not None:
          progress.set_postfix(loss=f"{m['loss']:.4f}", level=f"{m['level']:.3f}",
                               remaining=f"{100 * rem['paper']:.1f}%")
      eval_now = (config.train.eval_every_steps
                  and opt_step % config.train.eval_every_steps == 0) or is_last
      if eval_now:
        eval_metrics = run_eval(state)
        writer.write(opt_step, eval_metrics, prefix="eval")
        logging.info("step %d eval: %s", opt_step, _fmt(eval_metrics))
      ckpt_now = (config.train.checkpoint_every_steps
                  and opt_step % config.train.checkpoint_every_steps == 0) or is_last
      if ckpt_now:
        _check_finite(pending, accum, ckpt)
        save(state, metrics=eval_metrics if eval_now else None, force=True)
      if stop_signal["signum"] is not None and not is_last:
        _check_finite(pending, accum, ckpt)
        if not ckpt_now:  # issue 7: saving a step twice raises orbax's StepAlreadyExistsError
          save(state, force=True)
        ckpt.wait()
        raise Preempted(stop_signal["signum"], opt_step)
  finally:
    for s, h in old_handlers.items():
      signal.signal(s, h)
    if progress is not None:
      progress.close()
    writer.close()
    ckpt.wait()

  if not eval_metrics:  # resumed exactly at the end of training
    eval_metrics = run_eval(state)
    # Issue 7: the killed run may have died before its final eval row; log it (same values).
    with logging_utils.MetricsWriter(workdir, enabled=main) as final_writer:
      final_writer.write(steps, eval_metrics, prefix="eval")
  # The final-level masks, searched once for the counts, the report and the export.
  final_masks = (jax.device_get(jit_masks(state.params, state.scores, jnp.float32(final_level)))
                 if spec is not None else None)
  rem = remaining(state, final_level, final_masks)
  results = {"metrics": eval_metrics, "remaining_weights_paper": rem["paper"],
             "remaining_weights_plain": rem["plain"], "step": steps,
             "method": config.pruning.method, "final_level": final_level,
             "train_wall_time_s": time.time() - t_start, "task": task.name}
  if main:
    host_params = jax.device_get(state.params)
    host_scores = jax.device_get(state.scores)
    if config.train.report and spec is not None:
      report.write_report(workdir / "report", host_params, host_scores, final_level, spec,
                          masks=final_masks)
    if config.train.export:
      from mvp_jax import export
      export.export_pretrained(host_params, host_scores, final_level, spec, model.config,
                               tokenizer, workdir / "export", head=head,
                               metrics=eval_metrics, remaining=rem,
                               label_names=tuple(task.label_names or ()), masks=final_masks)
    run_io.write_atomic(results_path, json.dumps(results, indent=2, sort_keys=True))
  ckpt.close()
  return results


def metric_key(task: Any, eval_set: str, name: str) -> str:
  """'accuracy', or 'mismatched/accuracy' when a task has several eval sets (MNLI)."""
  return name if len(task.eval_sets) == 1 else f"{eval_set}/{name}"


def primary_metric(task: Any) -> str:
  """The metric that picks the best checkpoint: the first of the default eval set."""
  return metric_key(task, task.default_eval_set, task.metric_names[0])


def _check_finite(pending: list[tuple[int, dict[str, jax.Array]]], accum: int,
                  ckpt: checkpoint.Checkpointer) -> None:
  for micro, m in pending:
    loss = float(m["loss"])
    grad_norm = float(m["grad_norm"])
    if not np.isfinite(grad_norm) and np.isfinite(loss):
      # Issue 7: finite loss, non-finite gradients: the update is poisoned; stop before saving.
      loss = grad_norm
      what = "gradient norm"
    else:
      what = "loss"
    if not np.isfinite(loss):
      _stop_non_finite(f"non-finite {what} ({loss}) at optimizer step {(micro - 1) // accum + 1} "
                       f"(micro-step {micro}); stopped", ckpt, accum)


def _stop_non_finite(problem: str, ckpt: checkpoint.Checkpointer, accum: int) -> None:
  """Raises FloatingPointError naming the problem and the last good checkpoint kept."""
  ckpt.wait()
  last = ckpt.latest_step()
  where = f"step {last // accum}" if last is not None else "none yet"
  raise FloatingPointError(f"{problem}. The last good checkpoint is kept ({where}). Lower the "
                           "learning rates or check the data.")


def _all_finite(params: PyTree, scores: PyTree) -> jax.Array:
  """True (bool scalar) iff every float leaf of params and scores is finite."""
  leaves = [x for x in jax.tree.leaves((params, scores)) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves \
    else jnp.bool_(True)


def _fmt(metrics: Mapping[str, float]) -> str:
  return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def summarize(results: Mapping[str, Any], workdir: str | os.PathLike) -> str:
  """A few human lines on what a run did and where its outputs are."""
  w = pathlib.Path(workdir)
  metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(results["metrics"].items()))
  lines = [
    f"Task {results['task']}: {results['method']} to level {results['final_level']:g} in "
    f"{results['step']} steps ({results['train_wall_time_s']:.0f} s of training in this process).",
    f"Eval: {metrics}",
    f"Remaining encoder weights: {100 * results['remaining_weights_paper']:.2f}% (paper rule), "
    f"{100 * results['remaining_weights_plain']:.2f}% of the pruned matrices.",
    f"Outputs in {w}: eval_results.json, metrics.jsonl, tb/, report/, export/, checkpoints/.",
  ]
  return "\n".join(lines)
