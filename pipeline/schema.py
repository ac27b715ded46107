"""The run schema: every param, tag and metric name the pipeline writes or reads.

Any script that logs runs under these names can be compared by `pipeline compare`.
The README's "Run schema" section documents each name.
"""


class Params:
    DEVICE = "device"
    DATASET = "dataset"  # fashion-mnist, mnist, cifar10, synthetic, imagefolder:PATH, a factory
    INPUT_SHAPE = "input_shape"  # CxHxW, read from the data
    NUM_CLASSES = "num_classes"  # read from the data
    SHUFFLE = "shuffle"  # True: the training batches in a seeded order, the same on every device
    MODEL = "model"  # mlp-784-512-512-10, cnn, vit, or package.module:factory as given
    MODEL_OPTIONS = "model_options"  # KEY=VALUE,... passed to a factory
    PRECISION = "precision"  # fp32, tf32, bf16, fp16
    PARAMETERS = "parameters"  # the model's parameter count
    HIDDEN = "hidden"
    LAYERS = "layers"
    EPOCHS = "epochs"
    BATCH_SIZE = "batch_size"
    LR = "lr"
    OPTIMIZER = "optimizer"  # sgd, adamw
    WEIGHT_DECAY = "weight_decay"
    MOMENTUM = "momentum"  # sgd's
    COMPILE = "compile"  # none (eager) or the torch.compile mode
    WORKERS = "workers"  # DataLoader workers (--loader dataloader)
    PIN_MEMORY = "pin_memory"  # --loader dataloader: batches copied from pinned memory
    PATCH = "patch"  # vit's patch side
    SEED = "seed"
    LOADER = "loader"
    TRAIN_SIZE = "train_size"
    TEST_SIZE = "test_size"
    TARGET_ACCURACY = "target_accuracy"


# Runs are comparable when all their params except these are equal. `mlflow run` also logs its
# -P values, among them where data and runs go, which say nothing about the workload.
NOT_GROUPING_PARAMS = frozenset({Params.DEVICE, Params.TARGET_ACCURACY, "data_dir", "model_uri"})


class Tags:
    DEVICE = "pipeline.device"  # the device that ran: cpu, cuda:0, mps (the param may say auto)
    DEVICE_TYPE = "pipeline.device_type"  # cpu, cuda or mps
    DEVICE_NAME = "pipeline.device_name"  # GPU, SoC or CPU model
    HOST = "pipeline.host"
    # The process that logs the run, beyond doubt (tracking.process): a RUNNING run is closed
    # only when its machine is this one and no process with that pid and start time exists.
    PID = "pipeline.pid"
    PROCESS_START = "pipeline.process_start"  # the process's own start time, as a token
    MACHINE = "pipeline.machine"  # host name with boot id (Linux) or boot time; no option sets it
    WORKLOAD = "pipeline.workload"  # what ran, resolved (config.workload): compare groups by it
    STAGE = "pipeline.stage"  # train, test, compare, sweep
    TORCH_VERSION = "pipeline.torch_version"
    TORCH_CUDA = "pipeline.torch_cuda"
    GPU_DRIVER = "pipeline.gpu_driver"  # cuda runs: the NVIDIA driver's version
    CUDNN_VERSION = "pipeline.cudnn_version"  # cuda runs
    # train/test: fp32 math in effect (torch's fp32_precision read back: ieee or tf32), and
    # any variable that overrides it (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE, NVIDIA_TF32_OVERRIDE)
    FP32_MATMUL = "pipeline.fp32_matmul"
    FP32_CONV = "pipeline.fp32_conv"
    TF32_OVERRIDE = "pipeline.tf32_override"
    OPTIMIZER_IMPL = "pipeline.optimizer_impl"  # train: fused (CUDA) or torch's default
    DETERMINISTIC = "pipeline.deterministic"  # train: cuDNN/torch deterministic algorithms
    CPU_FALLBACKS = "pipeline.cpu_fallbacks"  # train: operations a back end ran on the CPU
    PEAK_MEMORY_SOURCE = "pipeline.peak_memory_source"  # train: what peak_memory_mb measures
    ENERGY_SOURCE = "pipeline.energy_source"  # cuda train runs with an energy counter
    PROFILE_NOTE = "pipeline.profile_note"  # train: what the operation table's times are
    PROFILE_STEP = "pipeline.profile_step"  # train: the step the window ran (eager, optimizer)
    HOST_ALLOCATOR = "pipeline.host_allocator"  # train/test: whether freed memory is kept
    PYTHON_VERSION = "pipeline.python_version"
    PLATFORM = "pipeline.platform"
    MLFLOW_VERSION = "pipeline.mlflow_version"
    PIPELINE_VERSION = "pipeline.version"
    GIT_COMMIT = "pipeline.git_commit"
    SOURCE_RUN_ID = "pipeline.source_run_id"  # test runs: the run that trained the model
    FAILURE_REASON = "pipeline.failure_reason"
    FLAGS = "pipeline.flags"  # set by compare: comma-separated finding kinds
    VERDICT = "pipeline.verdict"  # compare runs: flagged or clean
    DOCTOR_FAILURES = "pipeline.doctor_failures"  # doctor runs: the checks that failed
    NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
    PARENT = "mlflow.parentRunId"  # a sweep's children: the UI nests them under the parent
    # MLflow's run context, as a fluent mlflow.start_run records it (the UI's User, Source and
    # Version columns); `mlflow run` sets its own, which a run it created keeps.
    USER = "mlflow.user"
    SOURCE_NAME = "mlflow.source.name"
    SOURCE_TYPE = "mlflow.source.type"
    SOURCE_COMMIT = "mlflow.source.git.commit"


class Stages:
    TRAIN = "train"
    TEST = "test"
    COMPARE = "compare"
    SWEEP = "sweep"  # the parent run of a sweep; its children are train runs
    DOCTOR = "doctor"  # one device's operations checked against the CPU


# What pipeline.peak_memory_source says (train runs), and the short name tables label a
# peak-memory figure with when the figures beside it were measured another way.
MEMORY_CUDA = "cuda allocator peak over the epochs (max_memory_allocated)"
MEMORY_MPS = "mps current_allocated_memory, sampled during the epochs"
MEMORY_RSS_SAMPLED = "process resident set, sampled during the epochs"
MEMORY_VMHWM = "process peak resident set (VmHWM)"
MEMORY_SOURCES = {
    MEMORY_CUDA: "allocator peak",
    MEMORY_MPS: "mps allocated, sampled",
    MEMORY_RSS_SAMPLED: "RSS, sampled",
    MEMORY_VMHWM: "process peak RSS",
}


MEMORY_MIXED = (
    "Peak memory was measured in different ways here (in brackets), which are different "
    "quantities: compare it only between figures measured the same way."
)


def memory_method(source: str | None) -> str:
    """The short name of a peak_memory_source ("unlabelled" for runs that lack the tag)."""
    return MEMORY_SOURCES.get(source or "", source or "unlabelled")


class Metrics:
    TRAIN_LOSS = "train_loss"  # every batch, step = global batch index from 0
    TEST_LOSS = "test_loss"  # every epoch, step = epoch from 1
    TEST_ACCURACY = "test_accuracy"  # fraction 0..1, step = epoch from 1
    EPOCH_TIME_S = "epoch_time_s"  # training + test pass of one epoch, step = epoch
    EPOCH_SAMPLES_PER_S = "epoch_samples_per_s"  # the epoch's training throughput, step = epoch
    FIRST_EPOCH_TIME_S = "first_epoch_time_s"
    COMPILE_TIME_S = "compile_time_s"  # compiled runs: compiling every batch shape, first
    TRAIN_TIME_S = "train_time_s"  # total of the training passes
    EVAL_TIME_S = "eval_time_s"  # total of the test passes, each warm
    EVAL_WARM_UP_S = "eval_warm_up_s"  # the untimed evaluation batch before the first
    WALL_TIME_S = "wall_time_s"  # from the process's start to this metric, the run's last
    SAMPLES_PER_S = "samples_per_s"  # steady-state training throughput (epochs after the first)
    TIME_TO_TARGET_S = "time_to_target_s"
    PARITY_MAX_ABS_LOGIT_DIFF = "parity_max_abs_logit_diff"
    PARITY_ARGMAX_AGREEMENT = "parity_argmax_agreement"
    PARITY_INPUT_MISMATCH = "parity_input_mismatch"  # input values unlike the CPU's: must be 0
    # bf16/fp16 runs: the CPU in that precision against the CPU in fp32, the expected gap
    PARITY_PRECISION_MAX_ABS_LOGIT_DIFF = "parity_precision_max_abs_logit_diff"
    PARITY_PRECISION_ARGMAX_AGREEMENT = "parity_precision_argmax_agreement"
    FORWARD_FLOPS = "forward_flops_per_sample"  # one image's forward pass (torch's counter)
    CPU_FALLBACKS = "cpu_fallbacks"  # distinct operations that ran on the CPU instead
    PEAK_MEMORY_MB = "peak_memory_mb"  # see the tag pipeline.peak_memory_source
    RESERVED_MEMORY_MB = "reserved_memory_mb"  # cuda: what the caching allocator reserved
    ENERGY_J = "energy_j"  # over the epochs, where a counter exists (NVML)
    SAMPLES_PER_J = "samples_per_j"
    PROFILE_BATCHES = "profile_batches"  # batches in the profiled window (operations.json)
    CHECKS = "checks"  # doctor runs: checks_pass, checks_fail, checks_error, ... (a count each)
