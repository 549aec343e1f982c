"""The offline-to-online protocol in one process: the learner loop the services reuse."""
