"""Reading and validating configuration values: one place for the spec, the service config and flags."""
