# How the recipe runs its jobs (sourced by the recipe's scripts).
#
# train_cmd and decode_cmd are called as
#     ${train_cmd} [--gpu N] JOB=1:N exp/.../log/name.JOB.log COMMAND ...
#     ${train_cmd} [--gpu N] exp/.../log/name.log COMMAND ...
# and write one log per job. The backend:
#     local  utils/run.pl runs the jobs on this machine, all N at once
#     slurm  utils/slurm.pl submits them as one Slurm job array and waits for it;
#            --gpu N (the recipe's --ngpu and --inference_ngpu) asks for --gres=gpu:N
cmd_backend=local         # local or slurm
## Slurm (cmd_backend=slurm; empty: the cluster's default)
slurm_partition=""        # partition of the jobs
slurm_gpu_partition=""    # partition of the jobs that ask for GPUs (empty: slurm_partition)
slurm_account=""          # account to charge
slurm_train_mem=""        # memory of a train_cmd job (training, dumping, statistics), e.g. 32G
slurm_decode_mem=""       # memory of a decode_cmd job (decoding), e.g. 8G
slurm_time=""             # time limit of a job, e.g. 24:00:00

case "${cmd_backend}" in
    local)
        export train_cmd="utils/run.pl"
        export decode_cmd="utils/run.pl"
        ;;
    slurm)
        slurm_opts=${slurm_partition:+ --partition ${slurm_partition}}${slurm_gpu_partition:+ --gpu_partition ${slurm_gpu_partition}}
        slurm_opts+=${slurm_account:+ --account ${slurm_account}}${slurm_time:+ --time ${slurm_time}}
        export train_cmd="utils/slurm.pl${slurm_opts}${slurm_train_mem:+ --mem ${slurm_train_mem}}"
        export decode_cmd="utils/slurm.pl${slurm_opts}${slurm_decode_mem:+ --mem ${slurm_decode_mem}}"
        ;;
    *)
        die "cmd.sh: cmd_backend must be local or slurm, got '${cmd_backend}'"
        ;;
esac
