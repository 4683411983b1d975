# Parse command-line options into shell variables of the calling script.
#
# Source this file after setting the option variables to their defaults:
#
#     stage=1          # first stage to run
#     use_decoder=true # attention decoder on top of the encoder
#     . utils/parse_options.sh
#
# Then `--stage 3`, `--stage=3` and `--use-decoder false` set the variables
# (dashes in a name read as underscores). Only variables that already exist can be
# set; a variable whose current value is true or false only takes true or false.
# The options are removed from "$@"; what follows them stays there.
#
# `--help` (or `-h`) prints ${help_message} (when the caller set it) and then every
# option of the calling script with its current value and its comment: the lines
# `name=value  # comment` at the start of a line of the script, above the line that
# sources this file. Lines `## Title` there start a group.
# `--config FILE` reads `--name value` lines (or `name=value` lines) from FILE.
#
# The variables of this file start with `_po_` to keep out of the caller's way.

_po_script=${BASH_SOURCE[1]:-$0}

_po_print_help() {
    [ -n "${help_message:-}" ] && echo "${help_message}"
    echo "Options (current value, then description):"
    local line name comment
    while IFS= read -r line; do
        if [[ ${line} =~ parse_options\.sh ]]; then
            break
        elif [[ ${line} =~ ^##[[:space:]]+(.*)$ ]]; then
            echo ""
            echo "  # ${BASH_REMATCH[1]}"
        elif [[ ${line} =~ ^([A-Za-z_][A-Za-z0-9_]*)=[^#]*#[[:space:]]?(.*)$ ]]; then
            name=${BASH_REMATCH[1]}
            comment=${BASH_REMATCH[2]}
            if [ -n "${!name+x}" ]; then
                printf '  --%-26s %-22s # %s\n' "${name}" "\"${!name}\"" "${comment}"
            fi
        fi
    done <"${_po_script}"
}

_po_set() {
    # _po_set NAME VALUE: check NAME is an option of the caller and assign it.
    local name=${1//-/_} value=$2
    if [[ ! ${name} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!name+x}" ]; then
        echo "$0: invalid option --$1 (see $0 --help)" >&2
        return 1
    fi
    case "${!name}" in
        true | false)
            if [ "${value}" != true ] && [ "${value}" != false ]; then
                echo "$0: --$1 takes true or false, got '${value}'" >&2
                return 1
            fi
            ;;
    esac
    printf -v "${name}" '%s' "${value}"
}

_po_read_config() {
    local file=$1 line key value
    if [ ! -f "${file}" ]; then
        echo "$0: --config: no such file ${file}" >&2
        return 1
    fi
    while IFS= read -r line || [ -n "${line}" ]; do
        line=${line%%#*}
        line=$(echo "${line}" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
        [ -z "${line}" ] && continue
        if [[ ${line} =~ ^--?([A-Za-z0-9_-]+)[[:space:]=]+(.*)$ ]] || [[ ${line} =~ ^([A-Za-z0-9_-]+)=(.*)$ ]]; then
            key=${BASH_REMATCH[1]}
            value=${BASH_REMATCH[2]}
            _po_set "${key}" "${value}" || return 1
        else
            echo "$0: ${file}: cannot read the line '${line}'" >&2
            return 1
        fi
    done <"${file}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --help | -h)
            _po_print_help
            exit 0
            ;;
        --config)
            [ $# -ge 2 ] || { echo "$0: --config needs a file" >&2; exit 1; }
            _po_read_config "$2" || exit 1
            shift 2
            ;;
        --)
            shift
            break
            ;;
        --*=*)
            _po_name=${1%%=*}
            _po_set "${_po_name#--}" "${1#*=}" || exit 1
            shift
            ;;
        --*)
            [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
            _po_set "${1#--}" "$2" || exit 1
            shift 2
            ;;
        *)
            break
            ;;
    esac
done
unset _po_name
true
