"""``kubectl lparkube``: the kubectl plugin (the ``kubectl-lparkube`` executable).

``main`` parses the command line (``verb``: the shared options and exit codes), each verb is a
module of ``verbs`` that ``verbs.VERBS`` lists, ``cluster`` wraps the Kubernetes client and
turns its errors into messages, and ``waiting`` watches an object until a verb's verdict on it
is final, printing the verb's progress line as its status changes.
"""
