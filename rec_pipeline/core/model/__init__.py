"""Learning and serving: incremental features, the Keras retrieval and LightGBM ranking models
(`retrieval`, `ranking`, together a `recommender`), the evaluation gate, the model registry, the
micro-batch refresh that ties them together, and publishing the recommendations and the serving
copy readers query (`publish`, `serving`)."""
