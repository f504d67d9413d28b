"""The verbs of ``kubectl lparkube``, in the order ``--help`` lists them. A new verb is a module
here that defines ``VERB`` (a ``lparkube.kubectl_plugin.verb.Verb``) and one line below."""

from lparkube.kubectl_plugin.verb import Verb
from lparkube.kubectl_plugin.verbs import hibernate, restart, resume, save, status

VERBS: tuple[Verb, ...] = (save.VERB, hibernate.VERB, resume.VERB, restart.VERB, status.VERB)
