# Shared body of tools/train_full_1p.sh and tools/train_performance_1p.sh (sourced, not run).
# ModelZoo conventions: ASCEND_DEVICE_ID (default 0), RANK_SIZE=1; paths resolved like the ModelZoo test scripts:
# run from the model root or from its test/ folder, cur_path is the model root (training runs there, so relative
# paths such as --data_path=./data mean the same from both places) and everything is written to
# <cur_path>/test/output/$ASCEND_DEVICE_ID/: the log train_$ASCEND_DEVICE_ID.log, the per-loop losses
# train_<CaseName>_loss.txt (one number per line; ActualLoss is its last line) and the key file <CaseName>.log
# (CaseName = <Network>_bs<B>_1p_<perf|acc>); the final lines "Final Performance images/sec",
# "E2E Training Duration sec", "Final Train Accuracy" go to stdout.
#
# modelzoo_run CASE DEFAULT_TRAIN_FLAGS... -- SCRIPT_ARGS...
#   CASE is perf or acc. Script args: --data_path=DIR (empty = built-in synthetic set), --batch_size=N;
#   anything else is passed to `python -m unet_perf.train` after the defaults (so it overrides them).
modelzoo_run() {
    local case_kind="$1"; shift
    local defaults=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do defaults+=("$1"); shift; done
    [[ $# -gt 0 ]] && shift
    local repo network batch_size data_path passthrough=() cur_path test_path_dir
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cur_path="$(pwd)"
    if [[ "$(basename "${cur_path}")" == "test" ]]; then
        test_path_dir="${cur_path}"
        cur_path="$(cd .. && pwd)"
    else
        test_path_dir="${cur_path}/test"
    fi
    cd "${cur_path}"
    network="2D_Unet_unet_perf_for_TensorFlow"
    batch_size=2
    data_path=""
    for para in "$@"; do
        case "${para}" in
            --data_path=*) data_path="${para#*=}" ;;
            --batch_size=*) batch_size="${para#*=}" ;;
            *) passthrough+=("${para}") ;;
        esac
    done
    export ASCEND_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"
    export RANK_SIZE="${RANK_SIZE:-1}"
    export RANK_ID="${RANK_ID:-0}"
    export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
    local out="${test_path_dir}/output/${ASCEND_DEVICE_ID}"
    local log="${out}/train_${ASCEND_DEVICE_ID}.log"
    local case_name="${network}_bs${batch_size}_${RANK_SIZE}p_${case_kind}"
    local loss_file="${out}/train_${case_name}_loss.txt"
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
    local fps e2e_time accuracy loss training_time
    fps=$(grep "Final Performance images/sec" "${log}" | tail -n 1 | awk -F' : ' '{print $2}')
    e2e_time=$(grep "E2E Training Duration sec" "${log}" | tail -n 1 | awk -F' : ' '{print $2}')
    accuracy=$(grep "Final Train Accuracy" "${log}" | tail -n 1 | awk -F' : ' '{print $2}')
    [[ -n "${e2e_time}" ]] || e2e_time=$((end - start))
    # The loss after each Session.run, from the progress lines "step N/T ... loss X ...".
    grep -E '^step [0-9]+/[0-9]+ ' "${log}" \
        | awk '{ for (i = 1; i < NF; i++) if ($i == "loss") { print $(i + 1); break } }' > "${loss_file}" || true
    loss=$(awk 'END {print}' "${loss_file}")
    [[ -n "${loss}" ]] || loss="None"
    training_time=$(awk -v b="${batch_size}" -v f="${fps}" 'BEGIN { if (f > 0) printf "%.2f", b * 1000 / f; else print "None" }')
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
