# How the recipe runs its jobs.
#
# train_cmd and decode_cmd are called as
#     ${train_cmd} JOB=1:N exp/.../log/name.JOB.log COMMAND ...
#     ${train_cmd} exp/.../log/name.log COMMAND ...
# utils/run.pl runs the jobs on this machine (all N at once, or at most
# --max_jobs_run of them) and writes one log per job.
#
# On a cluster, point them at a wrapper with the same interface that submits each
# job, e.g. for Slurm a script that loops over JOB=1:N and calls
#     srun --gres=gpu:1 --cpus-per-task=8 --mem=32G bash -c "COMMAND with JOB=i" >log.i 2>&1
# (the --gpu N option of train_cmd tells the wrapper how many GPUs a job needs;
# run.pl ignores it).

export train_cmd="utils/run.pl"
export decode_cmd="utils/run.pl"
