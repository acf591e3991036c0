"""The kopf operator: reconciles each PrepPublication into its serving stack."""
