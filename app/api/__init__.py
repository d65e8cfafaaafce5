"""One module per blueprint: parse, authorise, call a service, respond."""
