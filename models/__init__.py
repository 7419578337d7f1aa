"""Networks (generator G, discriminator D), heatmap ops and losses."""
