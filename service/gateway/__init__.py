"""The gateway: Traefik's generated configuration, its error pages and its process."""
