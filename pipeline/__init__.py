"""hypernet-tfx pipeline: configuration, pipeline definition and runners."""
