"""The train stage as a cloud job: a Vertex AI custom job (GPUs, one or more hosts) or a Cloud TPU VM.

Both are rendered from the same settings the Prefect UI's ``train`` form edits
(``gpt2ja/flows/config.py`` ``TrainSection``, i.e. ``gpt2ja/model/train.py`` ``TrainConfig``)
and the pipeline config's URIs, so a job trains exactly what the deployment would::

    python -m gpt2ja.flows.vertex render --config configs/demo.yaml --root gs://BUCKET/gpt2ja \\
        --project P --image us-central1-docker.pkg.dev/P/gpt2ja/gpt2ja:latest \\
        --gpus 8 --gpu-type a100 --replicas 2 --dry-run     # print the CreateCustomJob request
    python -m gpt2ja.flows.vertex render ... --gpus 1              # without --dry-run: create the job
    python -m gpt2ja.flows.vertex render --config ... --root gs://... --project P --tpu v4-8   # the TPU VM commands

Vertex AI: every replica runs the image of ``deploy/Dockerfile`` as ``gpt2ja train
--data gs://… --run gs://… --set field=value …``, one ``--set`` per train
setting. One host is one worker pool; more hosts are pool 0 (the chief, one
replica) plus pool 1 (the other hosts). The train setting ``backend`` picks the
route:

* ``tensorflow`` (the default): the image's ``tensorflow`` target (TensorFlow's
  GPU image). Vertex AI sets ``TF_CONFIG`` on each replica (task types ``chief``
  and ``worker``, what :func:`gpt2ja.model.distribute.worker_info` reads); the strategy
  follows the hardware: ``multi_worker`` for several hosts, ``mirrored`` for
  several GPUs on one host.
* ``jax``: the image's ``jax`` target (CUDA 13, no TensorFlow), ``KERAS_BACKEND=jax``,
  no strategy (one jitted step over every local device). Several hosts form one
  ``jax.distributed`` job: the container renders ``JAX_NUM_PROCESSES`` and starts
  through ``python -m gpt2ja.flows.vertex launch``, which reads Vertex AI's ``CLUSTER_SPEC``
  on the replica and sets ``JAX_COORDINATOR_ADDRESS`` (pool 0's host) and
  ``JAX_PROCESS_ID`` (pool 0 is process 0) before it runs ``gpt2ja``
  (:func:`jax_processes`). TPU v5e and v6e slices (:class:`VertexTpuJob`) are
  one pool of the TPU machine type with the slice's topology; JAX finds the
  slice's hosts itself there, so nothing is set.

The request is built with the client library's own types (``google-cloud-aiplatform``,
the ``gcp`` extra), so a wrong field, enum or machine spec fails here, offline.

From the Prefect UI, any number of hosts: the ``train-vertex`` flow
(``gpt2ja/flows/vertex_job.py``) renders the same request, creates the job with
:func:`job_client` and follows it to its end (:mod:`gpt2ja.infra.vertex_watch`).

Cloud TPU VM: the ``gcloud compute tpus tpu-vm`` commands of ``deploy/jobs/tpu-vm.sh``
with this config's ``gpt2ja train`` line: TensorFlow trains from one client on
worker 0 (``--strategy tpu``), JAX on every worker (``--backend jax``); rendered only.

NOTHING HERE HAS RUN AGAINST GOOGLE CLOUD (no account, no network where it was
written): the requests are rendered and validated offline (``tests/test_vertex.py``),
and created, polled and cancelled by the real client library over HTTP against a
local stand-in of the API that runs the replicas as local processes
(``tests/vertex_server.py``, ``GPT2JA_VERTEX_API_ENDPOINT``; ``tests/test_vertex_job.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2ja.infra.errors import Gpt2jaError

#: TensorFlow of the TPU VM route: tensorflow-tpu releases lag TensorFlow's (see deploy/README.md).
TPU_TF_VERSION = "2.18.0"
#: JAX of the JAX route (deploy/Dockerfile's jax target, TPU VM workers): the version the tests run with.
JAX_VERSION = "0.10.2"


class JobError(Gpt2jaError, ValueError):
    """A job that cannot be rendered: one line naming the setting and the fix."""


# ----------------------------------------------------------------- machines (presets are data)


class GpuType(BaseModel):
    """One Vertex AI GPU: its ``AcceleratorType`` name and the machine type for each GPU count per host."""

    accelerator: str
    machines: dict[int, str]


#: Vertex AI custom-training machine types per GPU count (https://cloud.google.com/vertex-ai/docs/training/configure-compute).
GPU_TYPES: dict[str, GpuType] = {
    # the default: bf16 (Ada), 24 GB; the same GPU as deploy/jobs/gpu-vm.sh
    "l4": GpuType(
        accelerator="NVIDIA_L4",
        machines={1: "g2-standard-12", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
    ),
    # cheapest, but no bf16 (use mixed_precision fp16) and 16 GB
    "t4": GpuType(
        accelerator="NVIDIA_TESLA_T4", machines={1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"}
    ),
    "a100": GpuType(
        accelerator="NVIDIA_TESLA_A100",
        machines={1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g"},
    ),
    "h100": GpuType(accelerator="NVIDIA_H100_80GB", machines={8: "a3-highgpu-8g"}),
}


class GpuJob(BaseModel):
    """Where and on what a Vertex AI custom job trains.

    Example::

        GpuJob(project="p1", image="us-central1-docker.pkg.dev/p1/gpt2ja/gpt2ja:latest",
               gpu_type="a100", gpus=8, replicas=2)     # 16 A100s: chief pool + one worker
    """

    model_config = ConfigDict(extra="forbid")

    project: str = Field(min_length=1, description="Google Cloud project id")
    region: str = Field("us-central1", description="Vertex AI region (it must offer the GPU)")
    image: str = Field(
        min_length=1,
        description="the image of deploy/Dockerfile in Artifact Registry (its "
        "tensorflow target, or its jax target for backend jax)",
    )
    gpu_type: Literal["l4", "t4", "a100", "h100"] = Field("l4", description="a key of GPU_TYPES")
    gpus: int = Field(1, ge=1, le=16, description="GPUs per host")
    replicas: int = Field(1, ge=1, le=64, description="hosts (replicas); more than one trains multi_worker")
    display_name: str = Field("gpt2ja-train", min_length=1, max_length=128)
    service_account: str | None = Field(None, description="run-as service account (default: Vertex AI's agent)")
    boot_disk_gb: int = Field(200, ge=100, le=64_000)

    @model_validator(mode="after")
    def _a_machine_has_that_many(self) -> "GpuJob":
        counts = sorted(GPU_TYPES[self.gpu_type].machines)
        if self.gpus not in counts:
            raise ValueError(f"{self.gpu_type} machines have {', '.join(map(str, counts))} GPUs, not {self.gpus}")
        return self

    @property
    def machine_type(self) -> str:
        return GPU_TYPES[self.gpu_type].machines[self.gpus]

    @property
    def devices(self) -> int:
        return self.gpus * self.replicas

    def strategy(self) -> str:
        return "multi_worker" if self.replicas > 1 else "mirrored" if self.gpus > 1 else "default"


class TpuVmJob(BaseModel):
    """A Cloud TPU VM (``gcloud compute tpus tpu-vm``) that trains with TPUStrategy.

    Example::

        TpuVmJob(project="p1", zone="us-central2-b", tpu_type="v4-8")
    """

    model_config = ConfigDict(extra="forbid")

    project: str = Field(min_length=1)
    zone: str = Field("us-central2-b", description="a zone that has the TPU type (v4: us-central2-b)")
    tpu_type: str = Field("v4-8", pattern=r"^v[0-9][a-z]*-[0-9]+$", description="accelerator type, e.g. v4-8")
    name: str = Field("gpt2ja-tpu", min_length=1)
    tf_version: str = Field(TPU_TF_VERSION, description="tensorflow-tpu installed on the workers (backend tensorflow)")
    jax_version: str = Field(JAX_VERSION, description="jax[tpu] installed on the workers (backend jax)")

    @property
    def multi_host(self) -> bool:
        """More than one TPU VM host: v4-16, v5litepod-16, v5p-16, v6e-16 and larger (-8 fits one host)."""
        return int(self.tpu_type.rsplit("-", 1)[1]) > 8

    @property
    def runtime_version(self) -> str:
        """The TPU software version for TensorFlow: ``tpu-vm-tf-X.Y.Z[-pod]-pjrt`` (https://cloud.google.com/tpu/docs/runtimes)."""
        return f"tpu-vm-tf-{self.tf_version}{'-pod' if self.multi_host else ''}-pjrt"

    @property
    def jax_runtime_version(self) -> str:
        """The TPU software version for JAX: the generation's base image (https://cloud.google.com/tpu/docs/runtimes).

        ``v2-alpha-tpuv6e`` (v6e), ``v2-alpha-tpuv5`` (v5p), ``v2-alpha-tpuv5-lite`` (v5e),
        ``tpu-ubuntu2204-base`` (v4 and older); JAX itself is installed by ``tpu-vm-setup.sh``.
        """
        generation = self.tpu_type.rsplit("-", 1)[0]
        return {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite"}.get(
            generation, "tpu-ubuntu2204-base"
        )

    @property
    def devices(self) -> int:
        """TPUStrategy replicas (JAX devices): v4 and v5p names count TensorCores, two a chip, one device (megacore)."""
        count = int(self.tpu_type.rsplit("-", 1)[1])
        return count // 2 if self.tpu_type.startswith(("v4-", "v5p-")) else count

    def strategy(self) -> str:
        return "tpu"


#: Vertex AI's TPU machine types by chips per host (https://cloud.google.com/vertex-ai/docs/training/configure-compute).
VERTEX_TPU_MACHINES = {
    "v5e": {1: "ct5lp-hightpu-1t", 4: "ct5lp-hightpu-4t", 8: "ct5lp-hightpu-8t"},
    "v6e": {1: "ct6e-standard-1t", 4: "ct6e-standard-4t", 8: "ct6e-standard-8t"},
}
#: The 2-D slice shapes of v5e and v6e by chips (https://cloud.google.com/tpu/docs/supported-tpu-configurations).
TPU_TOPOLOGIES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


class VertexTpuJob(BaseModel):
    """A Vertex AI custom job on one TPU v5e or v6e slice, training with backend jax.

    One worker pool of one replica: the slice's machine type (1, 4 or 8 chips per host; slices past 8 chips
    are hosts of 4) and its topology. Example::

        VertexTpuJob(project="p1", image="us-central1-docker.pkg.dev/p1/gpt2ja/gpt2ja-jax-tpu:latest",
                     tpu_type="v6e", chips=16)     # 4 hosts of ct6e-standard-4t, topology 4x4
    """

    model_config = ConfigDict(extra="forbid")

    project: str = Field(min_length=1, description="Google Cloud project id")
    region: str = Field("us-central1", description="Vertex AI region (it must offer the TPU type)")
    image: str = Field(min_length=1, description="deploy/Dockerfile's jax target built for TPUs (JAX_EXTRA=tpu)")
    tpu_type: Literal["v5e", "v6e"] = Field("v6e", description="TPU generation")
    chips: int = Field(8, description="chips in the slice: 1, 4, 8 (one host), 16 … 256 (hosts of 4)")
    display_name: str = Field("gpt2ja-train", min_length=1, max_length=128)
    service_account: str | None = Field(None, description="run-as service account (default: Vertex AI's agent)")
    boot_disk_gb: int = Field(200, ge=100, le=64_000)

    @model_validator(mode="after")
    def _a_slice_of_that_shape(self) -> "VertexTpuJob":
        if self.chips not in TPU_TOPOLOGIES:
            raise ValueError(
                f"{self.tpu_type} slices have {', '.join(map(str, TPU_TOPOLOGIES))} chips, not {self.chips}"
            )
        return self

    @property
    def hosts(self) -> int:
        return 1 if self.chips <= 8 else self.chips // 4

    @property
    def machine_type(self) -> str:
        return VERTEX_TPU_MACHINES[self.tpu_type][self.chips if self.chips <= 8 else 4]

    @property
    def topology(self) -> str:
        return TPU_TOPOLOGIES[self.chips]

    @property
    def devices(self) -> int:
        return self.chips  # one JAX device per v5e / v6e chip


# ----------------------------------------------------------------- the gpt2ja command line


def _yaml_value(value) -> str:
    """``value`` as the YAML scalar ``--set`` reads back to the same value (1e-08 → 1.0e-08, True → true)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def job_train_config(settings, data: str, run: str, job: GpuJob | TpuVmJob | VertexTpuJob):
    """The ``TrainConfig`` every replica of ``job`` trains: ``settings`` on gs://, the strategy the hardware's.

    Backend tensorflow: a ``default`` strategy is replaced by the hardware's; any other must agree.
    Backend jax: the strategy (TensorFlow's) stays ``default``; JAX uses every device of every host.
    """
    from gpt2ja.model.train import TrainConfig

    for name, uri in (("data", data), ("run", run)):
        if not uri.startswith("gs://"):
            raise JobError(
                f"{name} {uri} is not on gs://; a cloud job reads and writes gs:// only "
                "(give --root gs://BUCKET/PREFIX)"
            )
    values = settings.model_dump() if isinstance(settings, BaseModel) else dict(settings)
    given = values.get("strategy", "default")
    if values.get("backend", "tensorflow") == "jax":
        if given != "default":
            raise JobError(
                f"train strategy {given!r} is TensorFlow's; backend jax trains on every device of "
                f"{_describe(job)} without one (leave strategy default)"
            )
    elif isinstance(job, VertexTpuJob):
        raise JobError(
            f"{_describe(job)} trains with backend jax only (set backend: jax); TensorFlow on a "
            "TPU runs on a TPU VM (--tpu TYPE)"
        )
    else:
        wanted = job.strategy()
        allowed = {wanted} | ({"default", "mirrored"} if wanted == "default" else set())
        if given != "default" and given not in allowed:
            raise JobError(
                f"train strategy {given!r} does not fit {_describe(job)}: it needs {wanted!r} "
                f"(set strategy: {wanted}, or leave it default)"
            )
        values["strategy"] = wanted if given == "default" else given
    cfg = TrainConfig.model_validate({**values, "data": data, "run": run})
    if cfg.micro_batch % job.devices:
        up = -(-cfg.micro_batch // job.devices) * job.devices
        raise JobError(
            f"micro_batch {cfg.micro_batch} is not a multiple of the {job.devices} devices of "
            f"{_describe(job)} (it is summed over them); use micro_batch {up}"
        )
    return cfg


def train_args(settings, data: str, run: str, job: GpuJob | TpuVmJob | VertexTpuJob) -> list[str]:
    """The ``gpt2ja train`` arguments (after the entrypoint) that train ``settings`` on ``job``'s hardware.

    Every setting of :func:`job_train_config` that is not None is passed as
    ``--set name=value``, so the job runs exactly these settings, not the image's defaults;
    ``backend`` only when it is jax (``--backend jax``), so TensorFlow command lines are as before.
    """
    cfg = job_train_config(settings, data, run, job)
    args = ["train", "--data", data, "--run", run]
    for name, value in cfg.model_dump(exclude={"data", "run"}).items():
        if value is None or (name == "backend" and value == "tensorflow"):
            continue
        if name == "jit_compile":
            args.append("--xla" if value else "--no-xla")
        elif name in TRAIN_FLAGS:
            args += [TRAIN_FLAGS[name], str(value)]
        else:
            args += ["--set", f"{name}={_yaml_value(value)}"]
    return args


#: Settings that ``gpt2ja train`` has a flag for (the rest go as ``--set name=value``, read as YAML).
TRAIN_FLAGS = {
    "preset": "--preset",
    "init_from": "--init-from",
    "steps": "--steps",
    "batch_tokens": "--batch-tokens",
    "micro_batch": "--micro-batch",
    "learning_rate": "--learning-rate",
    "warmup_steps": "--warmup-steps",
    "backend": "--backend",
    "strategy": "--strategy",
    "mixed_precision": "--mixed-precision",
}


def backend_of(args: list[str]) -> str:
    """The backend a ``gpt2ja train`` command line of :func:`train_args` trains with (``--backend``; tensorflow)."""
    return args[args.index("--backend") + 1] if "--backend" in args else "tensorflow"


def _describe(job: GpuJob | TpuVmJob | VertexTpuJob) -> str:
    if isinstance(job, TpuVmJob):
        return f"TPU {job.tpu_type}"
    if isinstance(job, VertexTpuJob):
        return f"Vertex AI TPU {job.tpu_type} slice of {job.chips} chip(s)"
    return f"{job.replicas} host(s) × {job.gpus} {job.gpu_type.upper()}"


# ----------------------------------------------------------------- Vertex AI


def aiplatform_v1():
    """``google.cloud.aiplatform_v1``, or one line saying how to install it (the ``gcp`` extra)."""
    try:
        from google.cloud import aiplatform_v1 as v1
    except ImportError:
        raise JobError("google-cloud-aiplatform is not installed here; pip install -e '.[gcp]'") from None
    return v1


#: The container command of a JAX replica on several Vertex AI hosts: JAX's process variables from
#: CLUSTER_SPEC (:func:`jax_processes`), then the entrypoint with the job's arguments.
JAX_LAUNCH = ["python", "-m", "gpt2ja.flows.vertex", "launch", "--", "gpt2ja"]


def custom_job_request(job: GpuJob | VertexTpuJob, args: list[str]):
    """``aiplatform_v1.CreateCustomJobRequest`` for ``job`` running ``gpt2ja`` with ``args`` on every replica.

    The container follows the backend of ``args`` (:func:`backend_of`): TensorFlow's
    replicas run ``gpt2ja`` with ``TF_CPP_MIN_LOG_LEVEL=2``; JAX's get ``KERAS_BACKEND=jax``,
    and on several GPU hosts ``JAX_NUM_PROCESSES`` (the hosts) and the command
    :data:`JAX_LAUNCH`, which adds ``JAX_COORDINATOR_ADDRESS`` and ``JAX_PROCESS_ID``
    on each replica. A TPU slice is one pool of one replica with its machine type and
    topology (no accelerator fields: the ``ct5lp``/``ct6e`` machine types are the TPU).
    Built from the library's proto-plus types: an unknown field, a wrong enum
    name or a wrong value type raises here, before anything is sent.
    """
    v1 = aiplatform_v1()

    hosts = job.replicas if isinstance(job, GpuJob) else 1  # a TPU slice is one replica (JAX finds its hosts)
    if backend_of(args) == "jax":
        env = {"KERAS_BACKEND": "jax", **({"JAX_NUM_PROCESSES": str(hosts)} if hosts > 1 else {})}
        command = JAX_LAUNCH if hosts > 1 else ["gpt2ja"]
    else:
        env, command = {"TF_CPP_MIN_LOG_LEVEL": "2"}, ["gpt2ja"]
    if isinstance(job, VertexTpuJob):
        machine = v1.MachineSpec(machine_type=job.machine_type, tpu_topology=job.topology)
    else:
        machine = v1.MachineSpec(
            machine_type=job.machine_type,
            accelerator_type=v1.AcceleratorType[GPU_TYPES[job.gpu_type].accelerator],
            accelerator_count=job.gpus,
        )
    container = v1.ContainerSpec(
        image_uri=job.image, command=command, args=args, env=[v1.EnvVar(name=k, value=v) for k, v in env.items()]
    )
    disk = v1.DiskSpec(boot_disk_type="pd-ssd", boot_disk_size_gb=job.boot_disk_gb)

    def pool(replicas: int):
        return v1.WorkerPoolSpec(machine_spec=machine, replica_count=replicas, container_spec=container, disk_spec=disk)

    # pool 0: the chief (exactly one replica; JAX process 0); pool 1: the other hosts (TF_CONFIG "worker")
    pools = [pool(1)] + ([pool(hosts - 1)] if hosts > 1 else [])
    spec = v1.CustomJobSpec(
        worker_pool_specs=pools,
        # a lost host restarts every replica: they resume from the newest checkpoint on gs://
        scheduling=v1.Scheduling(restart_job_on_worker_restart=hosts > 1),
    )
    if job.service_account:
        spec.service_account = job.service_account
    return v1.CreateCustomJobRequest(
        parent=f"projects/{job.project}/locations/{job.region}",
        custom_job=v1.CustomJob(display_name=job.display_name, job_spec=spec),
    )


def request_json(request) -> str:
    """The request as the REST API's JSON (camelCase fields, enum names)."""
    return type(request).to_json(
        request, use_integers_for_enums=False, always_print_fields_with_no_presence=False, indent=2
    )


CLUSTER_SPEC_ENV = "CLUSTER_SPEC"
#: What ``jax.distributed.initialize()`` is given by the JAX trainer when they are set (none of them: it auto-detects).
JAX_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def jax_processes(cluster_spec: str) -> dict[str, str]:
    """This replica's ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` from ``CLUSTER_SPEC``.

    Vertex AI sets ``CLUSTER_SPEC`` on every replica of a job of several pools
    (https://cloud.google.com/vertex-ai/docs/training/distributed-training)::

        {"cluster": {"workerpool0": ["HOST0:2222"], "workerpool1": ["HOST1:2222", "HOST2:2222"]},
         "task": {"type": "workerpool1", "index": 1}, ...}    → coordinator HOST0:2222, 3 processes, id 2

    Processes are numbered pool by pool, pool 0 (the chief) first, so process 0 is
    the host that writes the run; the coordinator is pool 0's address, whose port
    Vertex AI opened for the job (no other process listens there in a JAX replica).
    """
    try:
        spec = json.loads(cluster_spec)
        cluster, task = spec["cluster"], spec["task"]
        pools = sorted(cluster, key=lambda name: int(name.removeprefix("workerpool")))
        order = [(pool, i) for pool in pools for i in range(len(cluster[pool]))]
        me = order.index((task["type"], int(task["index"])))
        coordinator = cluster["workerpool0"][0]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise JobError(
            f"{CLUSTER_SPEC_ENV} is not Vertex AI's cluster spec with this replica in "
            f"workerpool0..N ({type(err).__name__}: {err}): {cluster_spec[:200]}"
        ) from None
    return {"JAX_COORDINATOR_ADDRESS": coordinator, "JAX_NUM_PROCESSES": str(len(order)), "JAX_PROCESS_ID": str(me)}


def launch(command: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a JAX replica runs ``command`` with: ``environ`` and :func:`jax_processes` of ``CLUSTER_SPEC``.

    A ``JAX_NUM_PROCESSES`` already there (the rendered job's) must agree with the cluster spec.
    """
    environ = dict(os.environ if environ is None else environ)
    if not command:
        raise JobError("launch needs the command to run after --, e.g. -- gpt2ja train ...")
    if CLUSTER_SPEC_ENV not in environ:
        raise JobError(
            f"{CLUSTER_SPEC_ENV} is not set: `python -m gpt2ja.flows.vertex launch` is the command of a JAX "
            "replica in a Vertex AI job of several hosts, which sets it"
        )
    found = jax_processes(environ[CLUSTER_SPEC_ENV])
    rendered = environ.get("JAX_NUM_PROCESSES")
    if rendered is not None and rendered != found["JAX_NUM_PROCESSES"]:
        raise JobError(
            f"the job was rendered for JAX_NUM_PROCESSES={rendered} hosts but {CLUSTER_SPEC_ENV} lists "
            f"{found['JAX_NUM_PROCESSES']}"
        )
    return {**environ, **found}


#: An http://127.0.0.1:PORT address to reach instead of Vertex AI: the project's local stand-in
#: (tests/vertex_server.py) and nothing else; unset, the client talks to {region}-aiplatform.googleapis.com.
ENDPOINT_ENV = "GPT2JA_VERTEX_API_ENDPOINT"


def job_client(region: str):
    """``aiplatform_v1.JobServiceClient`` for ``region``: REST, Application Default Credentials.

    REST rather than the library's default gRPC: it is the transport the tests run
    (against the stand-in), so the only untested part is Google's side. With
    ``GPT2JA_VERTEX_API_ENDPOINT`` set, the client talks to that local address with
    anonymous credentials instead; an address off this machine is refused, so the
    variable cannot quietly send a job, or a request without credentials, anywhere else.
    """
    import urllib.parse

    v1 = aiplatform_v1()
    from google.api_core.client_options import ClientOptions

    endpoint = os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        from google.auth.exceptions import DefaultCredentialsError

        try:
            return v1.JobServiceClient(
                transport="rest", client_options=ClientOptions(api_endpoint=f"{region}-aiplatform.googleapis.com")
            )
        except DefaultCredentialsError as err:
            raise JobError(
                f"no Google Cloud credentials for Vertex AI here ({' '.join(str(err).split())}); run "
                "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
            ) from None
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
        raise JobError(
            f"{ENDPOINT_ENV}={endpoint} is not an http://127.0.0.1:PORT address; it is for the local "
            "stand-in of tests/vertex_server.py only: unset it to reach Vertex AI"
        )
    from google.auth.credentials import AnonymousCredentials

    return v1.JobServiceClient(
        credentials=AnonymousCredentials(), transport="rest", client_options=ClientOptions(api_endpoint=endpoint)
    )


def submit(request, region: str) -> str:
    """Create the custom job; returns its resource name. Run here against the stand-in only, never Google Cloud."""
    return job_client(region).create_custom_job(request=request).name


def prefect_job_variables(job: GpuJob) -> dict:
    """Job variables of a Prefect ``vertex-ai`` work pool (prefect-gcp) running the ``train`` deployment on ``job``.

    That worker runs one replica per flow run, so only one host fits it.
    """
    if job.replicas > 1:
        raise JobError(
            "a Prefect vertex-ai work pool runs one replica per flow run; for "
            f"{job.replicas} hosts run the train-vertex deployment (gpt2ja/flows/vertex_job.py) or "
            "`python -m gpt2ja.flows.vertex render` instead"
        )
    return {
        "region": job.region,
        "image": job.image,
        "machine_type": job.machine_type,
        "accelerator_type": GPU_TYPES[job.gpu_type].accelerator,
        "accelerator_count": job.gpus,
        "boot_disk_size_gb": job.boot_disk_gb,
    }


# ----------------------------------------------------------------- Cloud TPU VM


def tpu_vm_commands(job: TpuVmJob, args: list[str]) -> list[list[str]]:
    """The commands of ``deploy/jobs/tpu-vm.sh`` for ``job``: set up every worker, then train.

    Backend jax (``--backend jax`` in ``args``): the generation's JAX software version,
    ``jax[tpu]`` and the project without TensorFlow on every worker (``tpu-vm-setup.sh
    VERSION WHEEL jax``, with ``install-jax.sh``), and ``gpt2ja train`` on every worker
    (``--worker=all``): JAX runs one process per host, and ``jax.distributed.initialize()``
    finds the slice's hosts itself on Cloud TPU (``gpt2ja.model.trainer_jax`` calls it with no
    arguments there when ``JAX_COORDINATOR_ADDRESS`` and the others are unset).

    Backend tensorflow (below): train from worker 0.

    TensorFlow drives a TPU slice from one client: ``TPUStrategy`` in one
    process reaches the TPU runtime of every host over gRPC, and for a slice of
    several hosts it must be given the TPU's name, from which TensorFlow finds
    all the hosts (Google's "Training on TPU Pods",
    https://cloud.google.com/tpu/docs/training-on-tpu-pods). So ``gpt2ja
    train`` runs once, on worker 0: it is the chief (``worker_info`` is (0, 1,
    True) under TPUStrategy), reads the whole global data stream and writes the
    run directory; the other hosts only run the TPU runtime. On a slice of
    several hosts it gets ``tpu=NAME`` and ``TPU_LOAD_LIBRARY=0`` (the client
    process does not open worker 0's chips itself; the runtime does). Starting
    ``gpt2ja train`` on every worker (``--worker=all``) would start one client
    per host, each taking itself for the chief.
    """
    at = ["--project", job.project, "--zone", job.zone]
    wheel = "gpt2ja-0.1.0-py3-none-any.whl"
    if backend_of(args) == "jax":
        return [
            ["python3", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", "build/wheel", "."],
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "create",
                job.name,
                *at,
                "--accelerator-type",
                job.tpu_type,
                "--version",
                job.jax_runtime_version,
            ],
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "scp",
                f"build/wheel/{wheel}",
                "deploy/jobs/tpu-vm-setup.sh",
                "deploy/jobs/install-jax.sh",
                f"{job.name}:",
                *at,
                "--worker=all",
            ],
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "ssh",
                job.name,
                *at,
                "--worker=all",
                "--command",
                f"bash ~/tpu-vm-setup.sh {job.jax_version} ~/{wheel} jax",
            ],
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "ssh",
                job.name,
                *at,
                "--worker=all",
                "--command",
                "KERAS_BACKEND=jax ~/gpt2ja-venv/bin/gpt2ja " + shlex.join(args),
            ],
        ]
    env = "TF_CPP_MIN_LOG_LEVEL=2"
    if job.multi_host:
        args = [*args, "--set", f"tpu={job.name}"]
        env = "TPU_LOAD_LIBRARY=0 " + env
    return [
        ["python3", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", "build/wheel", "."],
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            job.name,
            *at,
            "--accelerator-type",
            job.tpu_type,
            "--version",
            job.runtime_version,
        ],
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "scp",
            f"build/wheel/{wheel}",
            "deploy/jobs/tpu-vm-setup.sh",
            f"{job.name}:",
            *at,
            "--worker=all",
        ],
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            job.name,
            *at,
            "--worker=all",
            "--command",
            f"bash ~/tpu-vm-setup.sh {job.tf_version} ~/{wheel}",
        ],
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            job.name,
            *at,
            "--worker=0",
            "--command",
            f"{env} ~/gpt2ja-venv/bin/gpt2ja " + shlex.join(args),
        ],
    ]


# ----------------------------------------------------------------- python -m gpt2ja.flows.vertex


def _train_inputs(config_path: str, root: str):
    """(train settings, shards URI, run URI) of the pipeline config, its root replaced by ``root``."""
    from gpt2ja.flows.config import ConfigError, validate_config
    from gpt2ja.infra.yamlconfig import read_yaml

    data = read_yaml(config_path, ConfigError, example="configs/demo.yaml")
    config = validate_config({**data, "root": root} if isinstance(data, dict) else data, config_path)
    if config.train is None:
        raise JobError(f"{config_path} has no train section: add one (see configs/demo.yaml)")
    return config.train, config.shards_uri, config.run_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt2ja.flows.vertex", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render (and without --dry-run, create) the training job")
    render.add_argument("--config", required=True, help="pipeline YAML with a train section")
    render.add_argument("--root", required=True, help="run root on gs:// (replaces the config's root)")
    render.add_argument("--project", required=True)
    render.add_argument("--region", default="us-central1")
    render.add_argument("--image", help="the training image (deploy/Dockerfile) in Artifact Registry")
    render.add_argument("--gpus", type=int, help="GPUs per host (Vertex AI)")
    render.add_argument("--gpu-type", default="l4", choices=sorted(GPU_TYPES))
    render.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="hosts; more than one trains multi_worker (backend jax: one jax.distributed process per host)",
    )
    render.add_argument("--service-account")
    render.add_argument("--tpu", help="a Cloud TPU VM of this type instead, e.g. v4-8 (commands only)")
    render.add_argument("--zone", default="us-central2-b", help="the TPU VM's zone")
    render.add_argument(
        "--vertex-tpu",
        choices=sorted(VERTEX_TPU_MACHINES),
        help="a Vertex AI job on a TPU slice of this generation instead (backend jax)",
    )
    render.add_argument("--chips", type=int, default=8, help="chips of the --vertex-tpu slice (1, 4, 8, 16 … 256)")
    render.add_argument(
        "--prefect", action="store_true", help="print the job variables of a Prefect vertex-ai work pool instead"
    )
    render.add_argument("--dry-run", action="store_true", help="print the API request; create nothing")
    launcher = sub.add_parser(
        "launch",
        help="(a JAX replica of a Vertex AI job of several hosts) set "
        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID from CLUSTER_SPEC, "
        "then run the command after --",
    )
    launcher.add_argument("cmd", nargs=argparse.REMAINDER, help="-- gpt2ja train ...")
    opts = parser.parse_args(argv)

    if opts.command == "launch":
        command = opts.cmd[1:] if opts.cmd[:1] == ["--"] else opts.cmd
        try:
            environ = launch(command)
        except JobError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("gpt2ja launch: " + " ".join(f"{k}={environ[k]}" for k in JAX_PROCESS_ENV), file=sys.stderr, flush=True)
        os.execvpe(command[0], command, environ)  # replaces this process: the replica's exit status is gpt2ja's

    from pydantic import ValidationError

    from gpt2ja.flows.config import ConfigError
    from gpt2ja.infra.yamlconfig import first_problem

    try:
        settings, data, run = _train_inputs(opts.config, opts.root)
        if opts.tpu:
            job = TpuVmJob(project=opts.project, zone=opts.zone, tpu_type=opts.tpu)
            for command in tpu_vm_commands(job, train_args(settings, data, run, job)):
                print("+ " + shlex.join(command))
            return 0
        if opts.vertex_tpu:
            if not opts.image:
                raise JobError("give --image URI (deploy/Dockerfile's jax target built with JAX_EXTRA=tpu)")
            job = VertexTpuJob(
                project=opts.project,
                region=opts.region,
                image=opts.image,
                tpu_type=opts.vertex_tpu,
                chips=opts.chips,
                service_account=opts.service_account,
            )
        elif opts.gpus is None or not opts.image:
            raise JobError(
                "give --gpus N and --image URI for a Vertex AI job (or --tpu TYPE for a TPU VM, "
                "--vertex-tpu v5e|v6e for a Vertex AI TPU slice)"
            )
        else:
            job = GpuJob(
                project=opts.project,
                region=opts.region,
                image=opts.image,
                gpu_type=opts.gpu_type,
                gpus=opts.gpus,
                replicas=opts.replicas,
                service_account=opts.service_account,
            )
        if opts.prefect:
            if not isinstance(job, GpuJob):
                raise JobError("--prefect renders a GPU machine (--gpus) only")
            print(json.dumps(prefect_job_variables(job), indent=2))
            return 0
        request = custom_job_request(job, train_args(settings, data, run, job))
    except ValidationError as err:
        print(f"error: {first_problem(err)}", file=sys.stderr)
        return 2
    except (JobError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if opts.dry_run:
        print(request_json(request))
        return 0
    try:
        print(f"created {submit(request, job.region)}")
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
