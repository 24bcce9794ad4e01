package balance

import "math"

// Haversine100km is the great-circle distance between two coordinates
// (degrees) in units of 100 km, the unit of Endpoint.Distance.
func Haversine100km(lat1, lon1, lat2, lon2 float64) float64 {
	const r = 6371.0 / 100
	rad := math.Pi / 180
	dlat, dlon := (lat2-lat1)*rad, (lon2-lon1)*rad
	h := math.Sin(dlat/2)*math.Sin(dlat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dlon/2)*math.Sin(dlon/2)
	return 2 * r * math.Asin(math.Sqrt(math.Min(1, h)))
}
