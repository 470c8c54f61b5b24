"""The health-check feature: probes, activities and workflow."""
