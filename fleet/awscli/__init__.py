"""``fleet`` commands mirroring ``aws iot`` for jobs: ``create-job``, ``describe-job``,
``list-jobs``, ``get-job-document``, ``cancel-job``, ``delete-job``,
``describe-job-execution``, ``list-job-executions-for-job``,
``list-job-executions-for-thing``, ``cancel-job-execution``, ``delete-job-execution``.

Each command is derived from the botocore ``iot`` service model, the way the AWS CLI v1
derives its own (:mod:`fleet.awscli.model`), and calls the operation through boto3::

    fleet delete-job --job-id JOB [--force | --no-force] [--namespace-id NS]
                     [--cli-input-json JSON] [--generate-cli-skeleton [input|output]]
                     [--endpoint-url URL] [--region R] [--profile P] [--output json]
                     [--query JMESPATH]

* Options: the input members in kebab case (``jobId`` -> ``--job-id``); booleans as a
  ``--force`` / ``--no-force`` pair (neither: not sent); lists of strings space-separated
  (``--targets ARN1 ARN2``); structures, maps and lists of structures as JSON or shorthand
  (``--timeout-config inProgressTimeoutInMinutes=30``); ``file://`` / ``fileb://`` values
  are read from files. Required members must be given, as options or in
  ``--cli-input-json``; a missing or bad one is a usage error naming the option (exit 2).
* ``--cli-input-json``: the parameters as JSON (or ``file://``); an option given on the
  command line overrides the JSON's value for that member.
* ``--generate-cli-skeleton [input]`` prints the input skeleton (JSON, indent 4) and calls
  nothing; ``output`` validates the options (required ones included) and prints a sample
  output (nothing for operations without output, e.g. ``delete-job``).
* ``list-*`` commands fetch every page (``--max-items``, ``--page-size``,
  ``--starting-token``; ``--no-paginate``, ``--next-token`` or ``--max-results`` make one
  call).
* Success prints the response as the AWS CLI's JSON output (indent 4; timestamps as they
  came over the wire, as in the AWS CLI v1), and nothing for operations without output. A
  failed call prints ``An error occurred (<Code>) when calling the <Operation> operation:
  <message>`` (or botocore's validation / connection error) to stderr and exits 255, as the
  AWS CLI v1.
* Endpoint: ``--endpoint-url``, else ``$DEVICESIM_ENDPOINT``, else the ready file of the
  running ``fleet up`` (``$DEVICESIM_READY_FILE``, default ``.state/ready.json``). Credentials
  and region: see :mod:`fleet.awscli.client`.
"""

from fleet.awscli.commands import register, run
from fleet.awscli.model import OPERATIONS

__all__ = ["OPERATIONS", "register", "run"]
