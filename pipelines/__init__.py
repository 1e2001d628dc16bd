"""Raw media to records and back: decoding, the record schema, the Beam extraction and the tf.data reader."""
