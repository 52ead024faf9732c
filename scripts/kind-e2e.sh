#!/usr/bin/env bash
# End to end on a kind cluster: an empty cluster to a scored transaction and a monthly schedule.
#
#   1. create the kind cluster (node image from scripts/versions.env)
#   2. install cert-manager, KServe (raw deployment mode by default), Kubeflow Pipelines
#      standalone, and wait for each
#   3. build the four images (tag :ci) and load them into the cluster
#   4. kubectl apply -k manifests/overlays/kind; wait for Kafka and the monitor
#   5. seed Kafka's transactions topic with a labelled history (scripts/seed-job.yaml)
#   6. compile the training pipeline and submit it through a port-forwarded kfp.Client; wait for
#      the run to succeed and deploy, and for the InferenceService to be Ready on the new model
#   7. pytest -m e2e tests/e2e against the port-forwarded transformer and monitor
#   8. create the monthly recurring run (6-field cron, seconds first, UTC) and check it
#
# Usage: scripts/kind-e2e.sh [--dry-run] [--help]
#   --dry-run   print every command instead of running it (needs neither Docker nor kind)
# Environment:
#   CLUSTER_NAME   kind cluster name                          [fraud-e2e]
#   KEEP_CLUSTER   1: keep the cluster at the end             [0: delete it]
#   LOG_DIR        where the logs are collected, always       [./e2e-logs]
#   SKIP_BUILD     1: do not build the images (already built) [0]
#   KFP_PORT, TRANSFORMER_PORT, MONITOR_PORT  local ports of the port-forwards [8888 8080 9108]
#   PYTHON, FRAUD  the project's interpreter and CLI          [.venv/bin/python .venv/bin/fraud]
# Tool versions: scripts/versions.env (and nowhere else).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
# shellcheck source=scripts/versions.env
source scripts/versions.env

DRY_RUN=0
for arg in "$@"; do
  case "${arg}" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "kind-e2e: unknown argument ${arg} (try --help)" >&2; exit 2 ;;
  esac
done

CLUSTER_NAME="${CLUSTER_NAME:-fraud-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
LOG_DIR="${LOG_DIR:-${REPO}/e2e-logs}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KFP_PORT="${KFP_PORT:-8888}"
TRANSFORMER_PORT="${TRANSFORMER_PORT:-8080}"
MONITOR_PORT="${MONITOR_PORT:-9108}"
PYTHON="${PYTHON:-${REPO}/.venv/bin/python}"
FRAUD="${FRAUD:-${REPO}/.venv/bin/fraud}"

# The agreed names (manifests/, kserve/, the pipeline's parameters).
NAMESPACE=fraud-detection
ISVC=fraud-detector
TAG=ci
PREDICTOR_IMAGE="fraud-detection-predictor:${TAG}"
TRANSFORMER_IMAGE="fraud-detection-transformer:${TAG}"
MONITOR_IMAGE="fraud-detection-monitor:${TAG}"
PIPELINE_IMAGE="fraud-detection-pipeline:${TAG}"
KAFKA_BOOTSTRAP="kafka-broker.${NAMESPACE}.svc:9092"
TRANSACTIONS_TOPIC=transactions
# The model store: FRAUD_MODELS_URI of manifests/base/config.yaml, where the monitor reads the
# bundles (tests/unit/test_kind_workflow.py checks they agree).
MODELS_URI=s3://mlpipeline/fraud-detection/models
VERSION_ANNOTATION='fraud-detection\.example\.com/model-version'
MONTHLY_CRON='0 0 2 1 * *'
SCHEDULE_NAME=fraud-training-monthly
KFP_HOST="http://localhost:${KFP_PORT}"

WORK_DIR="$(mktemp -d -t fraud-kind-e2e.XXXXXX)"
PIPELINE_PACKAGE="${WORK_DIR}/fraud_training_pipeline.yaml"
PORT_FORWARD_PIDS=()
STEP=0
STEPS=14

# ------------------------------------------------------------------------------ helpers
step() {
  STEP=$((STEP + 1))
  printf '\n==> [%d/%d] %s\n' "${STEP}" "${STEPS}" "$*"
}

# The command as one copy-pasteable line: arguments with shell metacharacters single-quoted.
show() {
  local out="" arg
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="${arg} "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '+ %s\n' "${out% }"
}

# run CMD...: print the command, then run it (unless --dry-run).
run() {
  show "$@"
  [[ "${DRY_RUN}" == 1 ]] || "$@"
}

# retry ATTEMPTS DELAY CMD...: run until it succeeds (webhooks take a while to answer).
retry() {
  local attempts="$1" delay="$2" n=1
  shift 2
  show "$@"
  [[ "${DRY_RUN}" == 1 ]] && return 0
  until "$@"; do
    if ((n >= attempts)); then
      echo "kind-e2e: failed ${attempts} times: $*" >&2
      return 1
    fi
    echo "    (attempt ${n}/${attempts} failed; again in ${delay} s)"
    n=$((n + 1))
    sleep "${delay}"
  done
}

# wait_for WHAT TIMEOUT_S CMD...: poll until CMD succeeds and prints something.
wait_for() {
  local what="$1" timeout="$2" deadline
  shift 2
  echo "    waiting up to ${timeout} s for ${what}"
  show "$@"
  [[ "${DRY_RUN}" == 1 ]] && return 0
  deadline=$((SECONDS + timeout))
  until [[ -n "$("$@" 2>/dev/null || true)" ]]; do
    if ((SECONDS > deadline)); then
      echo "kind-e2e: gave up after ${timeout} s waiting for ${what}" >&2
      return 1
    fi
    sleep 5
  done
}

# port_forward NAME NAMESPACE TARGET LOCAL:REMOTE URL: forward in the background until the end,
# and wait until URL answers.
port_forward() {
  local name="$1" namespace="$2" target="$3" ports="$4" url="$5"
  printf '%s &\n' "$(show kubectl port-forward -n "${namespace}" "${target}" "${ports}")"
  if [[ "${DRY_RUN}" != 1 ]]; then
    kubectl port-forward -n "${namespace}" "${target}" "${ports}" \
      >"${LOG_DIR}/port-forward-${name}.log" 2>&1 &
    PORT_FORWARD_PIDS+=("$!")
  fi
  wait_for "${url}" 120 curl -fsS --max-time 5 -o /dev/null -w '%{http_code}' "${url}"
}

# The model version the InferenceService is annotated with (empty when none).
served_version() {
  kubectl get inferenceservice "${ISVC}" -n "${NAMESPACE}" \
    -o "jsonpath={.metadata.annotations.${VERSION_ANNOTATION}}"
}

collect_logs() {
  echo
  echo "==> collecting logs into ${LOG_DIR}"
  if [[ "${DRY_RUN}" == 1 ]]; then
    show kubectl get all,events -A
    show kind export logs "${LOG_DIR}/kind" --name "${CLUSTER_NAME}"
    return 0
  fi
  kubectl cluster-info >/dev/null 2>&1 || { echo "    no cluster to collect from"; return 0; }
  local ns pod dir
  kubectl get nodes -o wide >"${LOG_DIR}/nodes.txt" 2>&1 || true
  kubectl get inferenceservices -A -o yaml >"${LOG_DIR}/inferenceservices.yaml" 2>&1 || true
  for ns in "${NAMESPACE}" kubeflow kserve cert-manager; do
    dir="${LOG_DIR}/${ns}"
    mkdir -p "${dir}"
    kubectl get all,configmaps,jobs,endpoints -n "${ns}" -o wide >"${dir}/get-all.txt" 2>&1 || true
    kubectl get events -n "${ns}" --sort-by=.lastTimestamp >"${dir}/events.txt" 2>&1 || true
    kubectl describe pods -n "${ns}" >"${dir}/describe-pods.txt" 2>&1 || true
    for pod in $(kubectl get pods -n "${ns}" -o name 2>/dev/null); do
      kubectl logs -n "${ns}" "${pod}" --all-containers --prefix \
        >"${dir}/${pod#pod/}.log" 2>&1 || true
      kubectl logs -n "${ns}" "${pod}" --all-containers --prefix --previous \
        >"${dir}/${pod#pod/}.previous.log" 2>/dev/null || rm -f "${dir}/${pod#pod/}.previous.log"
    done
  done
  kind export logs "${LOG_DIR}/kind" --name "${CLUSTER_NAME}" >/dev/null 2>&1 || true
}

cleanup() {
  local status=$?
  set +e
  # (the ${a[@]+...} form: an empty array under set -u in bash 3.2, macOS's bash)
  for pid in ${PORT_FORWARD_PIDS[@]+"${PORT_FORWARD_PIDS[@]}"}; do kill "${pid}" 2>/dev/null; done
  collect_logs
  if [[ "${KEEP_CLUSTER}" == 1 ]]; then
    echo "==> keeping cluster ${CLUSTER_NAME} (KEEP_CLUSTER=1); delete it with:"
    echo "    kind delete cluster --name ${CLUSTER_NAME}"
  else
    echo "==> deleting cluster ${CLUSTER_NAME}"
    run kind delete cluster --name "${CLUSTER_NAME}"
  fi
  rm -rf "${WORK_DIR}"
  if [[ "${DRY_RUN}" == 1 ]]; then
    echo "==> dry run done: nothing was run"
  elif ((status == 0)); then
    echo "==> kind end-to-end run passed (logs in ${LOG_DIR})"
  else
    echo "==> kind end-to-end run FAILED with status ${status} (logs in ${LOG_DIR})" >&2
  fi
  exit "${status}"
}

mkdir -p "${LOG_DIR}"
trap cleanup EXIT
[[ "${DRY_RUN}" == 1 ]] && echo "dry run: the commands are printed, not run"

# The pipeline's parameters for a cluster run: deploy to the kind InferenceService through the
# model store, the :ci serving images, train on the seeded transactions topic.
PIPELINE_PARAMS=(
  --param deploy_target=kserve
  --param "namespace=${NAMESPACE}"
  --param "service_name=${ISVC}"
  --param "predictor_image=${PREDICTOR_IMAGE}"
  --param "transformer_image=${TRANSFORMER_IMAGE}"
  --param "kafka_bootstrap=${KAFKA_BOOTSTRAP}"
  --param "kafka_topic=${TRANSACTIONS_TOPIC}"
  --param "models_uri=${MODELS_URI}"
)

# ------------------------------------------------------------------------------ the run
step "creating kind cluster ${CLUSTER_NAME} (${KIND_NODE_IMAGE%@*})"
run kind create cluster --name "${CLUSTER_NAME}" --image "${KIND_NODE_IMAGE}" --wait 300s
run kubectl cluster-info --context "kind-${CLUSTER_NAME}"

step "installing cert-manager ${CERT_MANAGER_VERSION}"
run kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
run kubectl wait --for=condition=Available deployment --all -n cert-manager --timeout=600s

STORAGE_INITIALIZER_SECURITY='{"spec":{"container":{"securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]},"runAsNonRoot":true,"runAsUser":1000,"seccompProfile":{"type":"RuntimeDefault"}}}}}'
step "installing KServe ${KSERVE_VERSION} (raw deployment mode by default)"
retry 10 15 kubectl apply --server-side --force-conflicts -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve.yaml"
run kubectl wait --for=condition=Available deployment/kserve-controller-manager -n kserve --timeout=600s
retry 10 15 kubectl apply --server-side --force-conflicts -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve-cluster-resources.yaml"
run kubectl patch configmap inferenceservice-config -n kserve --type merge \
  -p '{"data":{"deploy":"{\"defaultDeploymentMode\": \"Standard\"}"}}'
# KServe 0.20 injects its storage initializer without a security context, which Pod Security
# Admission "restricted" (the level of namespace fraud-detection) rejects: give the default
# ClusterStorageContainer a restricted one (the storage-initializer image runs as uid 1000).
run kubectl patch clusterstoragecontainer default --type merge -p "${STORAGE_INITIALIZER_SECURITY}"
run kubectl rollout restart deployment/kserve-controller-manager -n kserve
run kubectl rollout status deployment/kserve-controller-manager -n kserve --timeout=600s

step "installing Kubeflow Pipelines ${KFP_VERSION} (standalone)"
run kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
run kubectl wait --for=condition=established --timeout=120s crd/applications.app.k8s.io
retry 5 15 kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
run kubectl wait --for=condition=Available deployment --all -n kubeflow --timeout=1500s

step "building the images (:${TAG})"
if [[ "${SKIP_BUILD}" == 1 ]]; then
  echo "    SKIP_BUILD=1: using the images already built"
else
  run docker build -f kserve/Dockerfile.predictor -t "${PREDICTOR_IMAGE}" .
  run docker build -f kserve/Dockerfile.transformer -t "${TRANSFORMER_IMAGE}" .
  run docker build -f drift/Dockerfile -t "${MONITOR_IMAGE}" .
  run docker build -f components/Dockerfile -t "${PIPELINE_IMAGE}" .
fi

step "loading the images into kind"
for image in "${PREDICTOR_IMAGE}" "${TRANSFORMER_IMAGE}" "${MONITOR_IMAGE}" "${PIPELINE_IMAGE}"; do
  run kind load docker-image "${image}" --name "${CLUSTER_NAME}"
done

step "applying manifests/overlays/kind"
retry 5 15 kubectl apply -k manifests/overlays/kind

step "waiting for Kafka (${KAFKA_BOOTSTRAP}) and its topics"
run kubectl rollout status deployment/kafka-broker -n "${NAMESPACE}" --timeout=600s
run kubectl wait --for=condition=Complete job/kafka-create-topics -n "${NAMESPACE}" --timeout=900s
# The deploy step runs in a pipeline pod (namespace kubeflow, service account pipeline-runner)
# and patches the InferenceService: check it may, before a run that would fail at its end.
if ! run kubectl auth can-i patch inferenceservices.serving.kserve.io -n "${NAMESPACE}" \
  --as=system:serviceaccount:kubeflow:pipeline-runner; then
  echo "kind-e2e: kubeflow/pipeline-runner may not patch InferenceServices in ${NAMESPACE}:" \
    "the kind overlay must bind the fraud-pipeline-deployer Role to it" >&2
  exit 1
fi

step "seeding topic ${TRANSACTIONS_TOPIC} with a labelled transaction history"
run kubectl delete job fraud-seed-transactions -n "${NAMESPACE}" --ignore-not-found
run kubectl delete configmap fraud-seed-script -n "${NAMESPACE}" --ignore-not-found
run kubectl create configmap fraud-seed-script -n "${NAMESPACE}" \
  --from-file=seed_transactions.py=scripts/seed_transactions.py
run kubectl apply -f scripts/seed-job.yaml
run kubectl wait --for=condition=Complete job/fraud-seed-transactions -n "${NAMESPACE}" --timeout=1300s
run kubectl logs job/fraud-seed-transactions -n "${NAMESPACE}"

step "compiling and submitting the training pipeline (image ${PIPELINE_IMAGE})"
port_forward kfp kubeflow svc/ml-pipeline "${KFP_PORT}:8888" "${KFP_HOST}/apis/v2beta1/healthz"
before=""
if [[ "${DRY_RUN}" != 1 ]]; then before="$(served_version || true)"; fi
echo "    served model version before the run: ${before:-none}"
run "${FRAUD}" pipeline compile --output "${PIPELINE_PACKAGE}" --image "${PIPELINE_IMAGE}"
submit=(
  "${FRAUD}" pipeline submit --host "${KFP_HOST}" --package "${PIPELINE_PACKAGE}"
  --reason "kind end-to-end" "${PIPELINE_PARAMS[@]}"
)
show "${submit[@]}"
run_id="<run-id>"
if [[ "${DRY_RUN}" != 1 ]]; then
  # Wide enough that the CLI's "submitted run <id> to <host>" line is never wrapped.
  submitted="$(COLUMNS=400 "${submit[@]}")"
  echo "${submitted}"
  run_id="$(sed -n 's/^submitted run \([^ ]*\) to .*/\1/p' <<<"${submitted}")"
  [[ -n "${run_id}" ]] || { echo "kind-e2e: no run id in: ${submitted}" >&2; exit 1; }
fi

step "waiting for run ${run_id} to succeed and deploy"
run "${PYTHON}" scripts/kfp_e2e.py wait-run --host "${KFP_HOST}" --run-id "${run_id}" --timeout 3600
model_version="<model-version>"
if [[ "${DRY_RUN}" != 1 ]]; then
  model_version="$(served_version)"
  if [[ -z "${model_version}" || "${model_version}" == "${before}" ]]; then
    echo "kind-e2e: the run did not roll out a new model (before: '${before}', now: '${model_version}')" >&2
    exit 1
  fi
fi
echo "    the pipeline deployed model version ${model_version}"

step "waiting for InferenceService ${ISVC} to be Ready on ${model_version}, and the monitor"
run kubectl rollout status "deployment/${ISVC}-predictor" -n "${NAMESPACE}" --timeout=900s
run kubectl rollout status "deployment/${ISVC}-transformer" -n "${NAMESPACE}" --timeout=900s
run kubectl wait --for=condition=Ready "inferenceservice/${ISVC}" -n "${NAMESPACE}" --timeout=900s
run kubectl rollout status deployment/fraud-monitor -n "${NAMESPACE}" --timeout=600s

step "running pytest -m e2e tests/e2e"
port_forward transformer "${NAMESPACE}" "svc/${ISVC}-transformer" "${TRANSFORMER_PORT}:80" \
  "http://localhost:${TRANSFORMER_PORT}/v1/models/${ISVC}"
port_forward monitor "${NAMESPACE}" svc/fraud-monitor "${MONITOR_PORT}:9108" \
  "http://localhost:${MONITOR_PORT}/metrics"
run env \
  "FRAUD_E2E_TRANSFORMER_URL=http://localhost:${TRANSFORMER_PORT}" \
  "FRAUD_E2E_MONITOR_URL=http://localhost:${MONITOR_PORT}" \
  "FRAUD_E2E_MODEL_NAME=${ISVC}" \
  "FRAUD_E2E_MODEL_VERSION=${model_version}" \
  "${PYTHON}" -m pytest -m e2e tests/e2e -v --junitxml "${LOG_DIR}/e2e-junit.xml"

step "creating the monthly recurring run (${MONTHLY_CRON}, UTC)"
run "${FRAUD}" pipeline schedule --host "${KFP_HOST}" --package "${PIPELINE_PACKAGE}" \
  --cron "${MONTHLY_CRON}" --name "${SCHEDULE_NAME}" "${PIPELINE_PARAMS[@]}"
run "${PYTHON}" scripts/kfp_e2e.py check-recurring --host "${KFP_HOST}" \
  --name "${SCHEDULE_NAME}" --cron "${MONTHLY_CRON}"
