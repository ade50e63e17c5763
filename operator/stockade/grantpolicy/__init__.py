"""Who may grant what: pure checks of an AgentRun's grant against the AgentPolicies that bound it.

No kopf, no Kubernetes client (import-linter's pure contract): the admission webhook and the
reconciler hand in what the watches have stored and act on what comes back.
"""
