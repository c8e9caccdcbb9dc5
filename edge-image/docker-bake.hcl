# Builds every image of the project (run from the repository root):
#
#   docker buildx bake -f edge-image/docker-bake.hcl            # all
#   docker buildx bake -f edge-image/docker-bake.hcl cloud      # cloud-cpu + cloud-cuda
#   REGISTRY=registry.example.com/fleet TAG=0.1.0 docker buildx bake -f edge-image/docker-bake.hcl --push
#
# The edge images are arm64; building them on x86 needs QEMU
# (docker run --privileged --rm tonistiigi/binfmt --install arm64).

variable "REGISTRY" {
  default = "ghcr.io/cloudtutor"
}

variable "TAG" {
  default = "0.1.0"
}

group "default" {
  targets = ["cloud-cpu", "cloud-cuda", "edge-l4t-r36", "edge-arm64"]
}

group "cloud" {
  targets = ["cloud-cpu", "cloud-cuda"]
}

group "edge" {
  targets = ["edge-l4t-r36", "edge-arm64"]
}

target "_common" {
  context = "."
  args = {
    VERSION = "${TAG}"
  }
}

target "cloud-cpu" {
  inherits   = ["_common"]
  dockerfile = "docker/Dockerfile"
  target     = "cpu"
  platforms  = ["linux/amd64", "linux/arm64"]
  tags       = ["${REGISTRY}/cloudtutor:${TAG}"]
}

target "cloud-cuda" {
  inherits   = ["_common"]
  dockerfile = "docker/Dockerfile"
  target     = "cuda"
  platforms  = ["linux/amd64"]
  tags       = ["${REGISTRY}/cloudtutor-cuda:${TAG}"]
}

target "edge-l4t-r36" {
  inherits   = ["_common"]
  dockerfile = "edge-image/Dockerfile.l4t-r36"
  platforms  = ["linux/arm64"]
  tags       = ["${REGISTRY}/cloudtutor-edge:${TAG}-l4t-r36"]
}

target "edge-arm64" {
  inherits   = ["_common"]
  dockerfile = "edge-image/Dockerfile.arm64"
  platforms  = ["linux/arm64"]
  tags       = ["${REGISTRY}/cloudtutor-edge:${TAG}-arm64"]
}
