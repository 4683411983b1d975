# Parse command-line options into shell variables of the calling script.
#
# The options of a script are the lines `name=value  # comment` at the start of a line
# above the line that parses them (`. utils/parse_options.sh`, or `recipe_init "$@"` of
# utils/common.sh, which sources this file):
#
#     stage=1          # first stage to run
#     use_decoder=true # attention decoder on top of the encoder
#     . utils/parse_options.sh
#
# Then `--stage 3`, `--stage=3` and `--use-decoder false` set the variables (dashes in
# a name read as underscores). Any other name is an error, and so is a value other
# than true or false for an option whose current value is true or false. The options
# are removed from "$@"; what follows them stays there.
#
# `--help` (or `-h`) prints ${help_message} (when the caller set it) and then every
# option with its current value and its comment; lines `## Title` among the options
# start a group. `--config FILE` reads `--name value` (or `name=value`) lines from FILE.
#
# The variables of this file start with `_po_` to keep out of the caller's way.

declare -F die >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/common.sh"

_po_script=${BASH_SOURCE[-1]}
_po_declarations=()       # the option and group lines of the script, in order
declare -gA _po_options=() # option name -> its comment

_po_read_declarations() {
    local line
    [ -r "${_po_script}" ] || die "cannot read the options of ${_po_script}"
    while IFS= read -r line; do
        if [[ ${line} =~ ^[[:space:]]*(\.|source)[[:space:]][^#]*parse_options\.sh ]] \
            || [[ ${line} =~ ^[[:space:]]*recipe_init([[:space:]]|$) ]]; then
            break
        elif [[ ${line} =~ ^##[[:space:]]+(.*)$ ]]; then
            _po_declarations+=("## ${BASH_REMATCH[1]}")
        elif [[ ${line} =~ ^([A-Za-z_][A-Za-z0-9_]*)=[^#]*#[[:space:]]?(.*)$ ]]; then
            _po_options[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
            _po_declarations+=("${BASH_REMATCH[1]}")
        fi
    done <"${_po_script}"
}

_po_print_help() {
    [ -n "${help_message:-}" ] && echo "${help_message}"
    echo "Options (current value, then description):"
    local entry
    for entry in "${_po_declarations[@]}"; do
        if [[ ${entry} == "## "* ]]; then
            echo ""
            echo "  # ${entry#"## "}"
        else
            printf '  --%-26s %-22s # %s\n' "${entry}" "\"${!entry}\"" "${_po_options[${entry}]}"
        fi
    done
}

_po_set() {
    # _po_set NAME VALUE: check NAME is an option of the caller and assign it.
    local _po_name=${1//-/_} _po_value=$2
    if [[ ! ${_po_name} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${_po_options[${_po_name}]+x}" ]; then
        die "invalid option --$1: not an option of ${_po_script##*/} (see ${_po_script} --help)"
    fi
    case "${!_po_name}" in
        true | false)
            if [ "${_po_value}" != true ] && [ "${_po_value}" != false ]; then
                die "--$1 takes true or false, got '${_po_value}'"
            fi
            ;;
    esac
    printf -v "${_po_name}" '%s' "${_po_value}"
}

_po_read_config() {
    local file=$1 line key value
    [ -f "${file}" ] || die "--config: no such file ${file}"
    while IFS= read -r line || [ -n "${line}" ]; do
        line=${line%%#*}
        line=$(echo "${line}" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
        [ -z "${line}" ] && continue
        if [[ ${line} =~ ^--?([A-Za-z0-9_-]+)[[:space:]=]+(.*)$ ]] || [[ ${line} =~ ^([A-Za-z0-9_-]+)=(.*)$ ]]; then
            key=${BASH_REMATCH[1]}
            value=${BASH_REMATCH[2]}
            _po_set "${key}" "${value}"
        else
            die "--config ${file}: cannot read the line '${line}'"
        fi
    done <"${file}"
}

_po_read_declarations
while [ $# -gt 0 ]; do
    case "$1" in
        --help | -h)
            _po_print_help
            exit 0
            ;;
        --config)
            [ $# -ge 2 ] || die "--config needs a file"
            _po_read_config "$2"
            shift 2
            ;;
        --)
            shift
            break
            ;;
        --*=*)
            _po_name=${1%%=*}
            _po_set "${_po_name#--}" "${1#*=}"
            shift
            ;;
        --*)
            [ $# -ge 2 ] || die "option $1 needs a value"
            _po_set "${1#--}" "$2"
            shift 2
            ;;
        *)
            break
            ;;
    esac
done
unset _po_name
true
