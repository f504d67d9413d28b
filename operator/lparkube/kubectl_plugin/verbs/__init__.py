"""The verbs of ``kubectl lparkube``, in the order ``--help`` lists them. A new verb is a module
here that defines ``VERB`` (a ``lparkube.kubectl_plugin.verb.Verb``) and one line below; verbs
under one noun are a ``Group`` (``failover.GROUP``)."""

from lparkube.kubectl_plugin.verb import Group, Verb
from lparkube.kubectl_plugin.verbs import failover, hibernate, restart, resume, save, status

VERBS: tuple[Verb | Group, ...] = (
    save.VERB,
    hibernate.VERB,
    resume.VERB,
    restart.VERB,
    status.VERB,
    failover.GROUP,
)
