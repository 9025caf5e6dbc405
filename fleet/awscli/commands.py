"""One ``fleet`` subcommand per mirrored ``aws iot`` operation: parser and run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from botocore import xform_name

from fleet.awscli import model, values
from fleet.awscli.client import (
    default_ca,
    default_endpoint,
    json_encoder,
    make_client,
    print_response,
)
from fleet.awscli.model import Option
from fleet.awscli.values import ParamError

#: Exit status of a failed call (service error, client-side validation, connection...), as
#: the AWS CLI v1 (v2 uses 254 for service errors).
CALL_FAILED = 255
#: Exit status of a usage error (argparse's).
USAGE = 2

ENDPOINT_HELP = ("the control plane's URL (default: $DEVICESIM_ENDPOINT, else the endpoint "
                 "in the ready file of the running `fleet up`: $DEVICESIM_READY_FILE or "
                 ".state/ready.json). For AWS IoT itself: https://iot.REGION.amazonaws.com")

SubParsers = argparse._SubParsersAction  # noqa: SLF001 - argparse exposes no public name


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    """Add the mirrored ``aws iot`` commands to ``fleet``'s subcommands."""
    for operation in model.OPERATIONS:
        add_command(sub, operation)


def add_command(sub: SubParsers[argparse.ArgumentParser],
                operation: str) -> argparse.ArgumentParser:
    name = model.command_name(operation)
    summary = model.summary(model.operation_model(operation).documentation)
    parser = sub.add_parser(
        name, help=_escape(f"{summary} (aws iot {name})"),
        description=_escape(f"{summary}\n\nMirrors `aws iot {name}` (AWS CLI v1): same "
                            "options and value syntax, through boto3."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group(f"options of aws iot {name}")
    for option in model.options(operation):
        _add_option(group, option)
    if model.paginator_config(operation) is not None:
        _add_paging_options(parser, operation)
    group.add_argument(
        "--cli-input-json", dest="awscli_cli_input_json", metavar="<value>",
        help="the parameters as JSON (as --generate-cli-skeleton prints them), or "
             "file://PATH; options given on the command line override its values")
    group.add_argument(
        "--generate-cli-skeleton", dest="awscli_generate_cli_skeleton", nargs="?",
        const="input", choices=("input", "output"), metavar="<value>",
        help="print a JSON skeleton without calling the service: `input` (the default) for "
             "--cli-input-json; `output` validates the other options and prints a sample "
             "output")
    _add_global_options(parser)
    parser.set_defaults(run=run, awscli_operation=operation, awscli_parser=parser)
    return parser


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _option_help(option: Option) -> str:
    parts = [model.summary(option.shape.documentation)]
    kind = option.type_name
    enum = getattr(option.shape, "enum", None)
    if enum:
        parts.append(f"(one of: {', '.join(enum)})")
    if kind == "list" and option.shape.member.type_name in model.SCALAR_TYPES:
        parts.append(f"({option.shape.member.type_name}s, space-separated, or a JSON list)")
    elif kind in ("structure", "map", "list"):
        parts.append("(JSON or shorthand syntax)")
    if option.required:
        parts.append("(required)")
    return _escape(" ".join(p for p in parts if p))


def _add_option(group: argparse._ArgumentGroup, option: Option) -> None:
    help_text = argparse.SUPPRESS if option.hidden else _option_help(option)
    kind = option.type_name
    if kind == "boolean":
        group.add_argument(option.cli_name, dest=option.dest, action="store_true",
                           default=None, help=help_text)
        group.add_argument(f"--no-{option.name}", dest=option.dest, action="store_false",
                           default=None, help=argparse.SUPPRESS if option.hidden else
                           f"do not set {option.cli_name}")
        return
    kwargs: dict[str, Any] = {"dest": option.dest, "metavar": "<value>", "help": help_text}
    if kind == "list":
        kwargs["nargs"] = "*"
    elif kind in ("integer", "long"):
        kwargs["type"] = int
    elif kind in ("float", "double"):
        kwargs["type"] = float
    group.add_argument(option.cli_name, **kwargs)


def _add_paging_options(parser: argparse.ArgumentParser, operation: str) -> None:
    """``awscli/customizations/paginate.py``: the CLI fetches every page unless told."""
    group = parser.add_argument_group(
        "pagination (all pages are fetched unless --no-paginate, --next-token or "
        "--max-results is given)")
    limit = float if model.limit_type(operation) in ("float", "double") else int
    group.add_argument("--starting-token", dest="awscli_starting_token", metavar="<value>",
                       help="the NextToken a previous truncated output printed")
    group.add_argument("--page-size", dest="awscli_page_size", type=limit, metavar="<value>",
                       help="items per service call (the calls still fetch them all)")
    group.add_argument("--max-items", dest="awscli_max_items", type=limit, metavar="<value>",
                       help="items to print in all; a NextToken is printed when truncated")


def _jmespath(expression: str) -> Any:
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        return jmespath.compile(expression)
    except JMESPathError as e:
        raise argparse.ArgumentTypeError(f"invalid JMESPath expression: {e}") from None


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("global options (as aws's)")
    group.add_argument("--endpoint-url", dest="awscli_endpoint_url", metavar="<value>",
                       help=ENDPOINT_HELP)
    group.add_argument("--region", dest="awscli_region", metavar="<value>",
                       help="the region (default: the configured one, else us-east-1)")
    group.add_argument("--profile", dest="awscli_profile", metavar="<value>",
                       help="a profile of the AWS config / credentials files")
    group.add_argument("--output", dest="awscli_output", choices=("json",), default="json",
                       help="the output format: json (the only one)")
    group.add_argument("--query", dest="awscli_query", type=_jmespath, metavar="<value>",
                       help="a JMESPath query applied to the output")
    group.add_argument("--no-paginate", dest="awscli_paginate", action="store_false",
                       default=True, help="make one service call, not one per page")


# -- run ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Call the operation as ``aws iot <command>`` would; the exit status."""
    operation: str = args.awscli_operation
    parser: argparse.ArgumentParser = args.awscli_parser
    skeleton: str | None = args.awscli_generate_cli_skeleton
    try:
        params = parameters(operation, args)
        given_on_cli = set(params)
        if args.awscli_cli_input_json is not None:
            for key, value in input_json(args.awscli_cli_input_json).items():
                params.setdefault(key, value)
    except ParamError as e:
        return usage_error(parser, str(e))
    if skeleton == "input":
        sys.stdout.write(json.dumps(input_skeleton(operation), indent=4,
                                    default=json_encoder) + "\n")
        return 0
    missing = [o.cli_name for o in model.options(operation)
               if o.required and o.member not in params]
    if missing:
        return usage_error(parser, "the following arguments are required: "
                                   + ", ".join(missing))
    paging = _paging(operation, args, given_on_cli) if skeleton is None else None
    if isinstance(paging, str):
        return usage_error(parser, paging)
    return _call(operation, args, params, paging, stubbed=skeleton == "output")


def parameters(operation: str, args: argparse.Namespace) -> dict[str, Any]:
    """The operation's parameters given as options (ParamError for a bad value)."""
    params: dict[str, Any] = {}
    for option in model.options(operation):
        value = getattr(args, option.dest, None)
        if value is not None:
            params[option.member] = values.unpack(operation, option, value)
    return params


def input_json(raw: str) -> dict[str, Any]:
    """The ``--cli-input-json`` value (JSON, or ``file://`` / ``fileb://`` holding JSON)."""
    cli_name = "--cli-input-json"
    try:
        loaded = values.load_paramfile(raw)
    except (OSError, UnicodeDecodeError) as e:
        raise ParamError(cli_name, f"Unable to load paramfile {raw}: {e}") from None
    text = raw if loaded is None else loaded
    try:
        data = json.loads(text)
    except ValueError as e:
        shown = text.decode(errors="replace") if isinstance(text, bytes) else text
        raise ParamError(cli_name, f"Invalid JSON: {e}\nJSON received: {shown}") from None
    if not isinstance(data, dict):
        raise ParamError(cli_name, "Invalid JSON: not an object of parameters")
    return data


def input_skeleton(operation: str) -> Any:
    """What ``aws iot <command> --generate-cli-skeleton`` prints (as a value).

    botocore's ArgumentGenerator, as the AWS CLI uses it. It fills an enum string with a
    random one of its values; here it is always the first, to print the same every time.
    """
    from botocore.utils import ArgumentGenerator

    shape = model.operation_model(operation).input_shape
    if shape is None:
        return {}
    return _first_enum_values(ArgumentGenerator().generate_skeleton(shape), shape)


def _first_enum_values(value: Any, shape: Any) -> Any:
    kind = shape.type_name
    if kind == "string" and shape.enum and isinstance(value, str):
        return shape.enum[0]
    if kind == "structure" and isinstance(value, dict):
        for name in value:
            value[name] = _first_enum_values(value[name], shape.members[name])
    elif kind == "list" and isinstance(value, list):
        value[:] = [_first_enum_values(v, shape.member) for v in value]
    elif kind == "map" and isinstance(value, dict):
        for key in value:
            value[key] = _first_enum_values(value[key], shape.value)
    return value


def _paging(operation: str, args: argparse.Namespace,
            given_on_cli: set[str]) -> dict[str, Any] | str | None:
    """PaginationConfig when the call paginates, None when not, or a usage error."""
    if model.paginator_config(operation) is None:
        return None
    config = {key: value for key, value in (
        ("StartingToken", getattr(args, "awscli_starting_token", None)),
        ("PageSize", getattr(args, "awscli_page_size", None)),
        ("MaxItems", getattr(args, "awscli_max_items", None))) if value is not None}
    manual = [option.cli_name for option in model.options(operation)
              if option.member in model.paging_members(operation)
              and option.member in given_on_cli]
    if args.awscli_paginate and not manual:
        return config
    if config:
        used = ", ".join(f"--{model.command_name(key)}" for key in config)
        without = ", ".join(["--no-paginate"] if not args.awscli_paginate else manual)
        return f"argument {used}: not allowed with {without} (no automatic pagination)"
    return None


def _call(operation: str, args: argparse.Namespace, params: dict[str, Any],
          paging: dict[str, Any] | None, *, stubbed: bool) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint: str | None = args.awscli_endpoint_url
    if endpoint is None:
        try:
            endpoint = default_endpoint()
        except (OSError, ValueError) as e:
            if not stubbed:  # a stubbed call needs no service
                print(f"fleet {model.command_name(operation)}: {e}", file=sys.stderr)
                return USAGE
    method = xform_name(operation)
    try:
        client = make_client(endpoint_url=endpoint, region=args.awscli_region,
                             profile=args.awscli_profile,
                             verify=None if endpoint is None else default_ca(endpoint))
        if stubbed:
            response = _stubbed_call(client, operation, params)
        elif paging is not None:
            response = client.get_paginator(method).paginate(
                **params, PaginationConfig=paging).build_full_result()
        else:
            response = getattr(client, method)(**params)
    except (BotoCoreError, ClientError, ValueError) as e:
        # As the AWS CLI: "\nAn error occurred (Code) when calling the Op operation: msg\n"
        sys.stderr.write(f"\n{e}\n")
        return CALL_FAILED
    print_response(response, sys.stdout, args.awscli_query)
    return 0


def _stubbed_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
    """``--generate-cli-skeleton output``: the call, validated, answered with a sample of
    the output shape instead of going to the service (``StubbedCLIOperationCaller`` in the
    AWS CLI).

    The AWS CLI answers through botocore's Stubber, which validates the sample against the
    output shape and so rejects its own sample for ``describe-job`` and
    ``describe-job-execution`` (min lengths and values); the sample is printed here.
    """
    from botocore.awsrequest import AWSResponse
    from botocore.utils import ArgumentGenerator

    output_shape = model.operation_model(operation).output_shape
    sample = {} if output_shape is None else ArgumentGenerator(
        use_member_names=True).generate_skeleton(output_shape)

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse(None, 200, {}, None), {**sample,
                                                   "ResponseMetadata": {"HTTPStatusCode": 200}}

    service_id = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register_first(f"before-call.{service_id}.{operation}", answer)
    return getattr(client, xform_name(operation))(**params)


def usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """argparse's usage error (usage line, then ``prog: error: message``), returned."""
    parser.print_usage(sys.stderr)
    sys.stderr.write(f"{parser.prog}: error: {message}\n")
    return USAGE
