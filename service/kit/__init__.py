"""Tools every domain uses and that know no domain: engines, pools, errors, pagination."""
