"""The cluster of docker-compose.yml as local processes (`make cluster`, `make cluster-down`)."""
