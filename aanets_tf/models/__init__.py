"""The networks: stable and plastic blocks, aggregation weights, the self-describing
`Backbone`, the cosine classifier and the phase network that grows."""
