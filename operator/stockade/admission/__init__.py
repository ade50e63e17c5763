"""Admission: nothing ungranted gets into an agent's namespace.

Three layers, each holding on its own: PodSecurity ``restricted`` on every run namespace (the
reconciler labels it), ValidatingAdmissionPolicies for the rules no grant can change (``vap``,
evaluated inside the API server, so they hold while the operator is down), and Stockade's webhook
for everything that depends on the grant (``policy``, served by kopf from ``handlers``).
"""
