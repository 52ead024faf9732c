#!/usr/bin/env bash
# Install kind and kubectl at the versions pinned in scripts/versions.env, checksums verified.
#
# Usage: scripts/install-tools.sh [BIN_DIR]     (default: ~/.local/bin; Linux or macOS,
#                                                amd64 or arm64)
# The GitHub workflow runs it with a directory it then puts on PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/versions.env
source "${here}/versions.env"

bin_dir="${1:-${HOME}/.local/bin}"
os="$(uname -s | tr '[:upper:]' '[:lower:]')"
case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "install-tools: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

mkdir -p "${bin_dir}"
scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT

sha256_of() {
  if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

# install NAME URL SHA256_URL: download, compare with the published digest, install.
install_binary() {
  local name="$1" url="$2" sum_url="$3" expected actual
  echo "==> installing ${name} from ${url}"
  curl -fsSL --retry 3 -o "${scratch}/${name}" "${url}"
  expected="$(curl -fsSL --retry 3 "${sum_url}" | cut -d' ' -f1)"
  actual="$(sha256_of "${scratch}/${name}")"
  if [[ "${expected}" != "${actual}" ]]; then
    echo "install-tools: ${name}: sha256 ${actual} does not match the published ${expected}" >&2
    exit 1
  fi
  install -m 0755 "${scratch}/${name}" "${bin_dir}/${name}"
}

install_binary kind \
  "https://github.com/kubernetes-sigs/kind/releases/download/${KIND_VERSION}/kind-${os}-${arch}" \
  "https://github.com/kubernetes-sigs/kind/releases/download/${KIND_VERSION}/kind-${os}-${arch}.sha256sum"
install_binary kubectl \
  "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/${os}/${arch}/kubectl" \
  "https://dl.k8s.io/release/${KUBECTL_VERSION}/bin/${os}/${arch}/kubectl.sha256"

"${bin_dir}/kind" version
"${bin_dir}/kubectl" version --client
