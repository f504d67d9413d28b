"""The verbs of ``kubectl lparkube``, in the order ``--help`` lists them. A new verb is a module
here that defines ``VERB`` (a ``lparkube.kubectl_plugin.verb.Verb``) and one line below."""

from lparkube.kubectl_plugin.verb import Verb
from lparkube.kubectl_plugin.verbs import save, status

VERBS: tuple[Verb, ...] = (save.VERB, status.VERB)
