"""The tenant provisioning feature: models, activities and workflows.

Nothing is re-exported here: the workflow sandbox imports this package before
``provisioning.workflows``, and it must not pull the activities' clients in with it.
"""
