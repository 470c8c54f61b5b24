"""The AI content pipeline: drafted by a model, reviewed, published everywhere or nowhere."""
