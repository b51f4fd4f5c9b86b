#!/usr/bin/env bash
# GPU benchmark (issue 15): llama-cpp-python built with CUDA for an NVIDIA H200 (sm_90), then
# benchmarks/bench_parallel.py with every layer on the GPU.
#
#   benchmarks/gpu.sh prepare [MODEL_REF]   here, with the package registry: fills .gpu/
#   benchmarks/gpu.sh run [BENCH ARGS...]   on the GPU machine, in a copy of this repository
#                                           that has .gpu/ (≤ 10 minutes on 16 cores)
#
# The GPU machine reaches no registry and receives the repository plus at most 64 MiB, so
# `prepare` gathers what `run` needs into .gpu/ (ignored by git):
#   .gpu/src/llama_cpp_python-<version>.tar.gz  the installed version's sdist without git
#                                               history, test models, docs, web UI (~10 MB)
#   .gpu/whl/*.whl                              CPython 3.12 wheels of this project's
#                                               dependencies that the machine's image lacks
#   .gpu/model/<file>.gguf.partNN + .sha256     the model in parts of at most 48 MiB
#   .gpu/data/ag_news_sample.csv                the seed workload's data (../shared stays here)
# With the device tool, carry `.gpu` (one call) and run `bash benchmarks/gpu.sh run`. A model
# over ~40 MiB needs its parts carried over several calls onto one warm machine first: carry
# `.gpu/model` alone each time with a command that moves the parts present to /tmp/gpu-model
# (`bash benchmarks/gpu.sh stash`); `run` assembles from both places and checks the sha256.
# The default model (98 MB) takes 3 calls, the 0.5B one (491 MB) 11.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
gpu="$here/.gpu"
stash=/tmp/gpu-model
part_mib=48

prepare() {
    local ref=${1:-default}
    local py="$here/.venv/bin/python"
    [ -x "$py" ] || { echo "gpu.sh prepare: run \`make setup\` first." >&2; exit 1; }
    rm -rf "$gpu" && mkdir -p "$gpu/src" "$gpu/whl" "$gpu/model"
    grep -qxF "/.gpu/" "$here/.git/info/exclude" 2>/dev/null \
        || echo "/.gpu/" >> "$here/.git/info/exclude"

    # 1. llama-cpp-python's sdist, the version installed here, without what a build never reads.
    local version tmp
    version=$("$py" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))")
    tmp=$(mktemp -d)
    "$py" -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" \
        "llama-cpp-python==$version"
    tar -xzf "$tmp"/llama_cpp_python-"$version".tar.gz -C "$tmp"
    local src="$tmp/llama_cpp_python-$version"
    rm -rf "$src/.git" "$src/vendor/llama.cpp/"{.git,models,docs,media,benches,tools/ui}
    find "$src" \( -name '*.mp4' -o -name '*.webp' -o -name '*.png' \) -delete
    tar -czf "$gpu/src/llama_cpp_python-$version.tar.gz" -C "$tmp" "llama_cpp_python-$version"
    rm -rf "$tmp"

    # 2. Wheels for CPython 3.12 (the machine's python3): this project's dependencies and
    #    theirs, less the packages the machine's image already holds (KINDS.md's list).
    "$py" -m pip download --quiet --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$gpu/whl" \
        ipython ipywidgets traitlets platformdirs jsonschema krippendorff diskcache
    local have="numpy pandas pyarrow scipy scikit_learn matplotlib jinja2 markupsafe psutil tqdm
        click pygments typing_extensions packaging attrs six python_dateutil pytz tzdata
        huggingface_hub filelock fsspec pyyaml requests urllib3 certifi idna charset_normalizer"
    for name in $have; do rm -f "$gpu/whl/$name"-*.whl; done

    mkdir -p "$gpu/data" && cp "$here/../shared/data/ag_news_sample.csv" "$gpu/data/"

    # 3. The model, in parts the device tool can carry.
    local path name
    path=$("$py" -c "import sys; from jupyter_localllm.models import resolve_model; \
print(resolve_model(sys.argv[1]))" "$ref")
    name=$(basename "$path")
    split -b "${part_mib}M" -d "$path" "$gpu/model/$name.part"
    (cd "$(dirname "$path")" && sha256sum "$name") > "$gpu/model/$name.sha256"
    du -sh "$gpu"/*
    echo "prepared $gpu for llama-cpp-python $version and $name"
}

stash_parts() {
    mkdir -p "$stash"
    cp "$gpu"/model/* "$stash"/
    ls -l "$stash"
}

assemble_model() {
    local sums name
    sums=$(ls "$gpu"/model/*.sha256 "$stash"/*.sha256 2>/dev/null | head -1)
    [ -n "$sums" ] || { echo "gpu.sh run: no model parts under .gpu/model or $stash" >&2; exit 1; }
    name=$(awk '{print $2}' "$sums")
    mkdir -p "$stash"
    cp -n "$gpu"/model/"$name".part* "$stash"/ 2>/dev/null || true
    cat "$stash/$name".part* > "/tmp/$name"
    (cd /tmp && sha256sum -c "$sums" >&2) \
        || { echo "gpu.sh run: $name is incomplete; carry the missing parts" >&2; exit 1; }
    echo "/tmp/$name"
}

run_bench() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
    local model site=/tmp/site
    model=$(assemble_model)

    # Dependencies, then llama-cpp-python built for Hopper (sm_90) only: a build for one
    # architecture takes a few minutes on 16 cores, all of them several times that.
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$gpu"/whl/*.whl
    export PYTHONPATH="$site:$here"
    export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
    export CMAKE_BUILD_PARALLEL_LEVEL
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
    time python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" \
        "$gpu"/src/llama_cpp_python-*.tar.gz
    python3 -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, \
'GPU offload:', llama_cpp.llama_supports_gpu_offload())"

    # The benchmark, both workloads, all layers on the GPU; llama-server rows are left out
    # (no .bench/llama-server there). LOCALLLM_RESULT_CACHE=0: every run computes.
    local out=${OUT:-/tmp}
    LOCALLLM_RESULT_CACHE=0 PYTHONUNBUFFERED=1 python3 "$here/benchmarks/bench_parallel.py" \
        --models "$model" --n-gpu-layers -1 --slots 8,16,48 --rounds 2 \
        --data "$gpu/data/ag_news_sample.csv" --markdown "$out/bench_gpu.md" "$@" 2>&1 \
        | grep -v '^llama_\|^load' | tee "$out/bench_gpu.log"
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    stash) stash_parts ;;
    run) shift; run_bench "$@" ;;
    *) sed -n '2,7p' "$0" >&2; exit 2 ;;
esac
