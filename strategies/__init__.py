"""Server side: the aggregation pipeline shared by both engines and the Flower strategy."""
