# Shared body of the ModelZoo scripts tools/train_{full,performance}_{1p,8p}.sh (sourced, not run).
# ModelZoo conventions: paths resolved like the ModelZoo test scripts: run from the model root or from its test/
# folder, cur_path is the model root (training runs there, so relative paths such as --data_path=./data mean the
# same from both places) and everything is written to <cur_path>/test/output/<id>/: the log train_<id>.log, the
# per-loop losses train_<CaseName>_loss.txt (one number per line; ActualLoss is its last line) and the key file
# <CaseName>.log (CaseName = <Network>_bs<B>_<RANK_SIZE>p_<perf|acc>); the final lines "Final Performance
# images/sec", "E2E Training Duration sec", "Final Train Accuracy" go to stdout. <id> is ASCEND_DEVICE_ID for one
# device and the global rank for several (rank 0, the chief, writes the key file: its rate is the global one).
# Network is the model root's folder name, as the ModelZoo harness names a network (it runs test/train_*.sh of that
# folder; the repo's test/ holds those entry points). TrainingTime (ms per step of one device's batch) is
# BatchSize x RANK_SIZE x 1000 / FPS with the global FPS, as the ModelZoo 8p scripts compute it.
#
# modelzoo_run CASE DEFAULT_TRAIN_FLAGS... -- SCRIPT_ARGS...       one device (ASCEND_DEVICE_ID, default 0)
# modelzoo_run_8p CASE DEFAULT_TRAIN_FLAGS... -- SCRIPT_ARGS...    one process per device of this server
#   CASE is perf or acc. Script args: --data_path=DIR (empty = built-in synthetic set), --batch_size=N (per
#   device); 8p also --rank_table=FILE (default: a generated one-server table) and --server_index=N (default 0).
#   Anything else is passed to `python -m unet_perf.train` after the defaults (so it overrides them).

# Sets cur_path and test_path_dir (ModelZoo rules) and changes into cur_path.
_modelzoo_paths() {
    cur_path="$(pwd)"
    if [[ "$(basename "${cur_path}")" == "test" ]]; then
        test_path_dir="${cur_path}"
        cur_path="$(cd .. && pwd)"
    else
        test_path_dir="${cur_path}/test"
    fi
    cd "${cur_path}"
}

# _modelzoo_args CASE DEFAULT_TRAIN_FLAGS... -- SCRIPT_ARGS...: sets the caller's locals case_kind, defaults, repo,
# cur_path, test_path_dir, data_path, batch_size, rank_table, server_index and passthrough (the caller declares them:
# bash scoping is dynamic), changes into cur_path and puts the repo on PYTHONPATH.
_modelzoo_args() {
    case_kind="$1"; shift
    defaults=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do defaults+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    # Before _modelzoo_paths changes directory: BASH_SOURCE may be relative.
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    _modelzoo_paths
    data_path=""
    batch_size=2
    rank_table=""
    server_index=0
    passthrough=()
    local para
    for para in "$@"; do
        case "${para}" in
            --data_path=*) data_path="${para#*=}" ;;
            --batch_size=*) batch_size="${para#*=}" ;;
            --rank_table=*) rank_table="${para#*=}" ;;
            --server_index=*) server_index="${para#*=}" ;;
            *) passthrough+=("${para}") ;;
        esac
    done
    export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
}

# _modelzoo_report CASE LOG OUT START END: final lines on stdout, loss file and key file in OUT.
_modelzoo_report() {
    local case_kind="$1" log="$2" out="$3" start="$4" end="$5"
    local network
    network="$(basename "${cur_path}")"
    local case_name="${network}_bs${batch_size}_${RANK_SIZE}p_${case_kind}"
    local loss_file="${out}/train_${case_name}_loss.txt"
    local fps e2e_time accuracy loss training_time
    fps=$(grep "Final Performance images/sec" "${log}" | tail -n 1 | awk -F' : ' '{print $2}' || true)
    e2e_time=$(grep "E2E Training Duration sec" "${log}" | tail -n 1 | awk -F' : ' '{print $2}' || true)
    accuracy=$(grep "Final Train Accuracy" "${log}" | tail -n 1 | awk -F' : ' '{print $2}' || true)
    [[ -n "${e2e_time}" ]] || e2e_time=$((end - start))
    # The loss after each Session.run, from the progress lines "step N/T ... loss X ...".
    grep -E '^step [0-9]+/[0-9]+ ' "${log}" \
        | awk '{ for (i = 1; i < NF; i++) if ($i == "loss") { print $(i + 1); break } }' > "${loss_file}" || true
    loss=$(awk 'END {print}' "${loss_file}")
    [[ -n "${loss}" ]] || loss="None"
    training_time=$(awk -v b="${batch_size}" -v n="${RANK_SIZE}" -v f="${fps}" \
        'BEGIN { if (f > 0) printf "%.2f", b * n * 1000 / f; else print "None" }')
    echo "------------------ Final result ------------------"
    echo "Final Performance images/sec : ${fps}"
    echo "E2E Training Duration sec : ${e2e_time}"
    if [[ "${case_kind}" == "acc" ]]; then
        echo "Final Train Accuracy : ${accuracy}"
    fi
    local key="${out}/${case_name}.log"
    {
        echo "Network = ${network}"
        echo "RankSize = ${RANK_SIZE}"
        echo "BatchSize = ${batch_size}"
        echo "DeviceType = $(uname -m)"
        echo "CaseName = ${case_name}"
        echo "ActualFPS = ${fps}"
        echo "TrainingTime = ${training_time}"
        if [[ "${case_kind}" == "acc" ]]; then echo "TrainAccuracy = ${accuracy}"; fi
        echo "ActualLoss = ${loss}"
        echo "E2ETrainingTime = ${e2e_time}"
    } > "${key}"
    echo "key file ${key}"
}

modelzoo_run() {
    local case_kind defaults repo cur_path test_path_dir data_path batch_size rank_table server_index passthrough
    _modelzoo_args "$@"
    export ASCEND_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"
    export RANK_SIZE="${RANK_SIZE:-1}"
    export RANK_ID="${RANK_ID:-0}"
    local out="${test_path_dir}/output/${ASCEND_DEVICE_ID}"
    local log="${out}/train_${ASCEND_DEVICE_ID}.log"
    rm -rf "${out}"   # a fresh run each time, like the ModelZoo scripts (the model dir lives here too)
    mkdir -p "${out}"
    if [[ -z "${data_path}" ]]; then
        echo "no --data_path given: training on the built-in synthetic set"
    fi
    echo "device ${ASCEND_DEVICE_ID}, log ${log}"
    local start end status=0
    start=$(date +%s)
    "${PYTHON:-python3}" -m unet_perf.train --data_path="${data_path}" --batch_size="${batch_size}" \
        --model_dir="${out}/model_dir" ${defaults[@]+"${defaults[@]}"} ${passthrough[@]+"${passthrough[@]}"} \
        > "${log}" 2>&1 || status=$?
    end=$(date +%s)
    if [[ ${status} -ne 0 ]]; then
        tail -n 20 "${log}" >&2
        echo "training failed (exit ${status}); full log: ${log}" >&2
        return "${status}"
    fi
    _modelzoo_report "${case_kind}" "${log}" "${out}" "${start}" "${end}"
}

# Several devices, as the ModelZoo 8p scripts run them: one background process per device of this server, each
# with RANK_TABLE_FILE, RANK_SIZE, RANK_ID (global: from the rank table, server_index * devices + i),
# ASCEND_DEVICE_ID/DEVICE_ID (local) and JOB_ID exported, bound with taskset to its share of the cores (total cores /
# devices on this server, contiguous, as the ModelZoo scripts do); then wait for all and exit with the first
# failure. RANK_SIZE (default 8) is the total rank count; it must match the rank table.
modelzoo_run_8p() {
    local case_kind defaults repo cur_path test_path_dir data_path batch_size rank_table server_index passthrough
    _modelzoo_args "$@"
    local python="${PYTHON:-python3}"
    export RANK_SIZE="${RANK_SIZE:-8}"
    export JOB_ID="${JOB_ID:-10087}"
    local out_root="${test_path_dir}/output"
    mkdir -p "${out_root}"
    if [[ -z "${rank_table}" ]]; then
        rank_table="${out_root}/rank_table_${RANK_SIZE}p.json"
        "${python}" -m unet_perf.rank_table generate --devices "${RANK_SIZE}" --output "${rank_table}" > /dev/null \
            || return 2
        echo "no --rank_table given: generated ${rank_table} (one server, ${RANK_SIZE} devices)"
    elif [[ -f "${rank_table}" ]]; then
        rank_table="$(cd "$(dirname "${rank_table}")" && pwd)/$(basename "${rank_table}")"
    fi
    local ranks
    ranks="$("${python}" -m unet_perf.rank_table ranks --rank_table "${rank_table}" --rank_size "${RANK_SIZE}" \
        --server_index "${server_index}")" || return 2
    export RANK_TABLE_FILE="${rank_table}"
    if [[ -z "${data_path}" ]]; then
        echo "no --data_path given: training on the built-in synthetic set"
    fi
    local cores local_count per_rank
    cores=$(grep -c '^processor' /proc/cpuinfo 2>/dev/null || echo 1)
    local_count=$(echo "${ranks}" | wc -l)
    per_rank=$((cores / local_count))
    [[ ${per_rank} -ge 1 ]] || per_rank=1
    local start end index=0 rank device first last out bind
    local pids=() rank_list=()
    start=$(date +%s)
    while read -r rank device; do
        out="${out_root}/${rank}"
        rm -rf "${out}"
        mkdir -p "${out}"
        first=$(( (index * per_rank) % cores ))
        last=$(( first + per_rank - 1 ))
        bind=()
        if command -v taskset > /dev/null 2>&1; then bind=(taskset -c "${first}-${last}"); fi
        echo "rank ${rank} device ${device} cores ${first}-${last}, log ${out}/train_${rank}.log"
        (
            export RANK_ID="${rank}" ASCEND_DEVICE_ID="${device}" DEVICE_ID="${device}"
            code=0
            ${bind[@]+"${bind[@]}"} "${python}" -m unet_perf.train --data_path="${data_path}" \
                --batch_size="${batch_size}" --model_dir="${out}/model_dir" ${defaults[@]+"${defaults[@]}"} \
                ${passthrough[@]+"${passthrough[@]}"} > "${out}/train_${rank}.log" 2>&1 || code=$?
            echo "${code}" > "${out}/exit_code"
            exit "${code}"
        ) &
        pids+=("$!")
        rank_list+=("${rank}")
        index=$((index + 1))
    done <<< "${ranks}"
    local first_failure=0 code
    for _ in "${pids[@]}"; do
        code=0
        wait -n || code=$?
        if [[ ${code} -ne 0 && ${first_failure} -eq 0 ]]; then first_failure=${code}; fi
    done
    end=$(date +%s)
    if [[ ${first_failure} -ne 0 ]]; then
        for rank in "${rank_list[@]}"; do
            code=$(cat "${out_root}/${rank}/exit_code" 2>/dev/null || echo "?")
            if [[ "${code}" != "0" ]]; then
                tail -n 5 "${out_root}/${rank}/train_${rank}.log" >&2
                echo "rank ${rank} failed (exit ${code}); full log: ${out_root}/${rank}/train_${rank}.log" >&2
            fi
        done
        echo "training failed (exit ${first_failure})" >&2
        return "${first_failure}"
    fi
    if [[ ! -f "${out_root}/0/train_0.log" ]]; then
        echo "rank 0 runs on another server: its test/output/0 holds the results"
        return 0
    fi
    _modelzoo_report "${case_kind}" "${out_root}/0/train_0.log" "${out_root}/0" "${start}" "${end}"
}
